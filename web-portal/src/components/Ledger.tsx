import { useEffect, useId, useState } from 'react';
import { apiJson, query } from '../api';
import { LEDGER_PAGE_SIZE, formatDecimal, formatMultiplier } from '../shared.js';
import { asNumber, asRecord, asString, formatDuration, formatTime, kindLabel, minerLabel, shortId } from '../format';
import type { Entry, EntryPage } from '../types';
import { Empty, ErrorMessage, Loading, Points } from './common';

type KindFilter = 'all' | 'waifu' | 'llama';

/** What a job's work was: "512×512 px × 20 steps" or "30 prompt + 24 completion tokens". */
export function describeWork(work: Record<string, unknown> | undefined): string | null {
  if (!work) return null;
  const width = asNumber(work.width);
  const height = asNumber(work.height);
  const steps = asNumber(work.steps);
  if (width !== undefined && height !== undefined) {
    return `${width}×${height} px${steps !== undefined ? ` × ${steps} steps` : ''}`;
  }
  const prompt = asNumber(work.prompt_tokens);
  const completion = asNumber(work.completion_tokens);
  if (prompt !== undefined || completion !== undefined) {
    return `${prompt ?? 0} prompt + ${completion ?? 0} completion tokens`;
  }
  return null;
}

function AccrualDetail({ entry }: { entry: Entry }) {
  const detail = entry.detail;
  const work = describeWork(asRecord(detail.work));
  const multiplier = asNumber(detail.multiplier);
  const latencyFactor = asNumber(detail.latency_factor);
  const latencyMs = asNumber(detail.latency_ms);
  const boost = asRecord(detail.boost);
  const boostMultiplier = boost ? asNumber(boost.multiplier) : undefined;
  const boostApplies = boost?.applies === true;
  return (
    <>
      <p className="ledger-what">
        {entry.model ? <strong>{entry.model}</strong> : 'Job'}
        {work && <span data-testid="ledger-work">: {work}</span>}
      </p>
      <dl className="facts">
        {entry.job_id && (
          <div>
            <dt>Job</dt>
            <dd>
              <code title={entry.job_id}>{shortId(entry.job_id, 8, 4)}</code>
            </dd>
          </div>
        )}
        {multiplier !== undefined && (
          <div>
            <dt>Model multiplier</dt>
            <dd data-testid="ledger-multiplier">{formatMultiplier(multiplier)}</dd>
          </div>
        )}
        {latencyFactor !== undefined && (
          <div>
            <dt>Latency factor</dt>
            <dd data-testid="ledger-latency-factor">
              {formatMultiplier(latencyFactor)}
              {latencyMs !== undefined && ` (${formatDuration(latencyMs)})`}
            </dd>
          </div>
        )}
        <div>
          <dt>Boost</dt>
          <dd data-testid="ledger-boost">
            {boostApplies && boostMultiplier !== undefined ? formatMultiplier(boostMultiplier) : 'none'}
          </dd>
        </div>
        {entry.miner_id && (
          <div>
            <dt>GPU</dt>
            <dd>
              <code title={entry.miner_id}>{minerLabel(entry.miner_id, entry.wallet)}</code>
            </dd>
          </div>
        )}
      </dl>
    </>
  );
}

function SlashDetail({ entry }: { entry: Entry }) {
  const detail = entry.detail;
  const requested = asRecord(detail.requested);
  const fraction = requested ? asNumber(requested.fraction) : undefined;
  const points = requested ? asNumber(requested.points) : undefined;
  const scope = asString(detail.scope);
  const season = asString(detail.season);
  return (
    <>
      <p className="ledger-what">
        <strong>Slash</strong>: <span data-testid="ledger-reason">{entry.reason ?? 'no reason given'}</span>
      </p>
      <dl className="facts">
        {fraction !== undefined && (
          <div>
            <dt>Asked</dt>
            <dd>{formatDecimal(fraction * 100, 4)}% of the season's points</dd>
          </div>
        )}
        {points !== undefined && (
          <div>
            <dt>Asked</dt>
            <dd>{formatDecimal(points)} points</dd>
          </div>
        )}
        {scope && (
          <div>
            <dt>Scope</dt>
            <dd>{scope === 'miner' && entry.miner_id ? `GPU ${entry.miner_id}` : scope}</dd>
          </div>
        )}
        {season && (
          <div>
            <dt>Season</dt>
            <dd>{season}</dd>
          </div>
        )}
        {entry.case_id && (
          <div>
            <dt>Case</dt>
            <dd>
              <code title={entry.case_id}>{shortId(entry.case_id, 8, 4)}</code>
            </dd>
          </div>
        )}
      </dl>
    </>
  );
}

export function LedgerRow({ entry }: { entry: Entry }) {
  const slash = entry.entry === 'slash';
  return (
    <tr
      data-testid="ledger-row"
      data-entry-id={entry.id}
      data-entry={entry.entry}
      data-kind={entry.kind}
      className={slash ? 'row-slash' : undefined}
    >
      <td data-label="When">{formatTime(entry.created_ms)}</td>
      <td data-label="Kind">
        <span className={`kind kind-${entry.kind}`}>{kindLabel(entry.kind)}</span>
      </td>
      <td data-label="What for" className="ledger-detail block-label">
        {slash ? <SlashDetail entry={entry} /> : <AccrualDetail entry={entry} />}
      </td>
      <td data-label="Points" className="num">
        <Points amount={entry.amount} testId="ledger-amount" />
      </td>
    </tr>
  );
}

/** A wallet's ledger, newest first, a page at a time. */
export function Ledger({ address }: { address: string }) {
  const [kind, setKind] = useState<KindFilter>('all');
  const [entries, setEntries] = useState<Entry[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [state, setState] = useState<'loading' | 'ok' | 'error' | 'more'>('loading');
  const [error, setError] = useState<Error | null>(null);
  const [generation, setGeneration] = useState(0);
  const filterId = useId();

  const path = (next: string | null) =>
    `/api/v1/wallets/${encodeURIComponent(address)}/ledger${query({
      limit: LEDGER_PAGE_SIZE,
      kind: kind === 'all' ? undefined : kind,
      cursor: next,
    })}`;

  useEffect(() => {
    const controller = new AbortController();
    setState('loading');
    setEntries([]);
    setCursor(null);
    apiJson<EntryPage>(path(null), { signal: controller.signal }).then(
      (page) => {
        setEntries(page.entries);
        setCursor(page.next_cursor ?? null);
        setState('ok');
      },
      (e: Error) => {
        if (controller.signal.aborted) return;
        setError(e);
        setState('error');
      },
    );
    return () => controller.abort();
  }, [address, kind, generation]);

  async function loadMore() {
    if (!cursor) return;
    setState('more');
    try {
      const page = await apiJson<EntryPage>(path(cursor));
      setEntries((old) => {
        const seen = new Set(old.map((e) => e.id));
        return [...old, ...page.entries.filter((e) => !seen.has(e.id))];
      });
      setCursor(page.next_cursor ?? null);
      setState('ok');
    } catch (e) {
      setError(e as Error);
      setState('error');
    }
  }

  return (
    <section aria-labelledby="ledger-heading" className="card">
      <div className="section-head">
        <h2 id="ledger-heading">Ledger</h2>
        <div className="inline-field">
          <label htmlFor={filterId}>Show</label>
          <select
            id={filterId}
            value={kind}
            onChange={(e) => setKind(e.target.value as KindFilter)}
            data-testid="ledger-kind"
          >
            <option value="all">Both kinds</option>
            <option value="waifu">Waifu only</option>
            <option value="llama">Llama only</option>
          </select>
        </div>
      </div>
      <p className="section-intro">
        Every credit and debit, newest first: the job and model, its work, the model's multiplier,
        the latency factor and any boost; slashes with their reason.
      </p>
      {state === 'loading' && <Loading what="the ledger" />}
      {state !== 'loading' && entries.length === 0 && state !== 'error' && (
        <Empty testId="ledger-empty">No ledger entries{kind === 'all' ? '' : ` of ${kindLabel(kind)} points`} yet.</Empty>
      )}
      {entries.length > 0 && (
        <div className="table-scroll">
          <table className="stack-table ledger-table" data-testid="ledger-table">
            <caption className="visually-hidden">Ledger entries, newest first</caption>
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Kind</th>
                <th scope="col">What for</th>
                <th scope="col" className="num">
                  Points
                </th>
              </tr>
            </thead>
            <tbody>
              {entries.map((entry) => (
                <LedgerRow key={entry.id} entry={entry} />
              ))}
            </tbody>
          </table>
        </div>
      )}
      {state === 'error' && error && (
        <ErrorMessage error={error} title="The ledger could not be loaded" onRetry={() => setGeneration((g) => g + 1)} />
      )}
      <div aria-live="polite" className="load-more-status">
        {state === 'more' && <span role="status">Loading more entries…</span>}
        {state === 'ok' && entries.length > 0 && !cursor && (
          <span className="muted" data-testid="ledger-end">
            All {entries.length} entries shown.
          </span>
        )}
      </div>
      {cursor && (state === 'ok' || state === 'more') && (
        <button
          type="button"
          className="button-secondary"
          onClick={loadMore}
          disabled={state === 'more'}
          data-testid="ledger-load-more"
        >
          Load more
        </button>
      )}
    </section>
  );
}
