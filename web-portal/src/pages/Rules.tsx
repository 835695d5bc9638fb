import { apiJson } from '../api';
import { useLoad, useTitle } from '../hooks';
import { formatMultiplier } from '../shared.js';
import { formatDuration, formatMb, formatTime, kindLabel } from '../format';
import type { BoostTier, ModelRule, Rules, SeasonWindow } from '../types';
import { Empty, ErrorMessage, Loading, PageHeading } from '../components/common';

function minGpu(model: ModelRule): string {
  if (model.min_gpu.length === 0) return 'any';
  if (model.min_gpu.length === 1) return model.min_gpu[0]!;
  return `${model.min_gpu.slice(0, -1).join(', ')} or ${model.min_gpu[model.min_gpu.length - 1]}`;
}

function ModelTable({ title, models, testId }: { title: string; models: ModelRule[]; testId: string }) {
  if (models.length === 0) return null;
  return (
    <div className="table-scroll">
      <table className="stack-table" data-testid={testId}>
        <caption>{title}</caption>
        <thead>
          <tr>
            <th scope="col">Model</th>
            <th scope="col" className="num">
              Multiplier
            </th>
            <th scope="col">Minimum GPU</th>
            <th scope="col" className="num">
              Minimum memory
            </th>
            <th scope="col" className="num">
              Full points up to
            </th>
            <th scope="col" className="num">
              Deadline
            </th>
          </tr>
        </thead>
        <tbody>
          {models.map((model) => (
            <tr key={model.id} data-testid="rule-model-row" data-model-id={model.id} data-multiplier={model.multiplier}>
              <th scope="row" data-label="Model">
                <code>{model.id}</code>
                {model.discontinued && <span className="badge badge-offline">Discontinued</span>}
              </th>
              <td data-label="Multiplier" className="num" data-testid="rule-multiplier">
                {formatMultiplier(model.multiplier)}
              </td>
              <td data-label="Minimum GPU">{minGpu(model)}</td>
              <td data-label="Minimum memory" className="num">
                {formatMb(model.min_vram_mb)}
              </td>
              <td data-label="Full points up to" className="num">
                {formatDuration(model.target_latency_ms)}
              </td>
              <td data-label="Deadline" className="num">
                {formatDuration(model.deadline_ms)}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function BoostTable({ tiers, unit, testId }: { tiers: BoostTier[]; unit: string; testId: string }) {
  return (
    <table className="compact" data-testid={testId}>
      <thead>
        <tr>
          <th scope="col">{unit} held</th>
          <th scope="col" className="num">
            Multiplier
          </th>
        </tr>
      </thead>
      <tbody>
        {tiers.map((tier) => (
          <tr key={tier.min_held}>
            <th scope="row">at least {tier.min_held}</th>
            <td className="num">{formatMultiplier(tier.multiplier)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function seasonText(season: SeasonWindow): string {
  if (!season.starts_ms && !season.ends_ms) return 'no start or end';
  return `from ${formatTime(season.starts_ms)}${season.ends_ms ? ` until ${formatTime(season.ends_ms)}` : ''}`;
}

function tiersGrouped(rules: Rules): { tier: number; names: string[] }[] {
  const groups = new Map<number, string[]>();
  for (const gpu of rules.gpu_tiers) {
    const list = groups.get(gpu.tier) ?? [];
    list.push(gpu.name);
    groups.set(gpu.tier, list);
  }
  return [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([tier, names]) => ({ tier, names }));
}

export default function RulesPage() {
  useTitle('Rules');
  const rules = useLoad('rules', (signal) => apiJson<Rules>('/api/v1/rules', { signal }));

  return (
    <div>
      <PageHeading>How points are counted</PageHeading>
      {rules.state === 'loading' && <Loading what="the rules" />}
      {rules.state === 'error' && (
        <ErrorMessage error={rules.error} title="The rules could not be loaded" onRetry={rules.reload} />
      )}
      {rules.state === 'ok' && (
        <>
          <section aria-labelledby="formulas-heading" className="card">
            <h2 id="formulas-heading">Formulas</h2>
            <dl className="formulas" data-testid="formulas">
              <div>
                <dt>Waifu points (images)</dt>
                <dd data-testid="formula-waifu">{rules.data.formulas.waifu}</dd>
              </div>
              <div>
                <dt>Llama points (LLMs)</dt>
                <dd data-testid="formula-llama">{rules.data.formulas.llama}</dd>
              </div>
              <div>
                <dt>Latency</dt>
                <dd data-testid="formula-latency">{rules.data.formulas.latency}</dd>
              </div>
              <div>
                <dt>Unit</dt>
                <dd>{rules.data.formulas.unit}</dd>
              </div>
            </dl>
          </section>

          <section aria-labelledby="models-heading" className="card">
            <h2 id="models-heading">Models</h2>
            <p className="section-intro">
              Each model's points multiplier, the least GPU and memory that may run it, and its latency
              window: full points up to the target, none at the deadline.
            </p>
            {rules.data.models.length === 0 && <Empty>No models are configured.</Empty>}
            <ModelTable
              title="Image models: Waifu points"
              models={rules.data.models.filter((m) => m.points_kind === 'waifu')}
              testId="rules-models-waifu"
            />
            <ModelTable
              title="LLMs: Llama points"
              models={rules.data.models.filter((m) => m.points_kind === 'llama')}
              testId="rules-models-llama"
            />
            <ModelTable
              title="Other models (earn no points)"
              models={rules.data.models.filter((m) => m.points_kind !== 'waifu' && m.points_kind !== 'llama')}
              testId="rules-models-other"
            />
          </section>

          <section aria-labelledby="boosts-heading" className="card">
            <h2 id="boosts-heading">Boosts</h2>
            <p data-testid="gpus-per-nft">
              Each NFT held boosts up to {rules.data.boosts.gpus_per_nft} of the wallet's GPUs, those
              seen earliest first. The multiplier depends on how many NFTs the wallet holds:
            </p>
            {rules.data.boosts.nft.length > 0 ? (
              <BoostTable tiers={rules.data.boosts.nft} unit="NFTs" testId="boost-nft-table" />
            ) : (
              <Empty>NFT boosts are off.</Empty>
            )}
            {rules.data.boosts.stheu.length > 0 ? (
              <>
                <h3>stHEU</h3>
                <BoostTable tiers={rules.data.boosts.stheu} unit="stHEU" testId="boost-stheu-table" />
              </>
            ) : (
              <p className="muted">stHEU boosts are off.</p>
            )}
          </section>

          <section aria-labelledby="seasons-heading" className="card">
            <h2 id="seasons-heading">Seasons</h2>
            <p data-testid="season-current">
              Current season: <strong>{rules.data.seasons.current.name}</strong> (
              {seasonText(rules.data.seasons.current)}).
            </p>
            {rules.data.seasons.all.length > 0 && (
              <ul className="plain-list">
                {rules.data.seasons.all.map((s) => (
                  <li key={s.name}>
                    {s.name}: {seasonText(s)}
                  </li>
                ))}
              </ul>
            )}
            <p>Slashing: {rules.data.seasons.slashing}</p>
          </section>

          <section aria-labelledby="tiers-heading" className="card">
            <h2 id="tiers-heading">GPU tiers</h2>
            <p className="section-intro">
              GPUs from lowest to highest tier. A GPU may run a model when its tier is at least the
              model's minimum and it has the memory.
            </p>
            <div className="table-scroll">
              <table className="compact" data-testid="gpu-tiers">
                <thead>
                  <tr>
                    <th scope="col" className="num">
                      Tier
                    </th>
                    <th scope="col">GPUs</th>
                  </tr>
                </thead>
                <tbody>
                  {tiersGrouped(rules.data).map((group) => (
                    <tr key={group.tier}>
                      <td className="num">{group.tier}</td>
                      <td>{group.names.join(', ')}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </section>
          <p className="muted">
            Points kinds: {kindLabel('waifu')} for image jobs, {kindLabel('llama')} for LLM jobs.
          </p>
        </>
      )}
    </div>
  );
}
