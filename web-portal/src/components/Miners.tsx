import { useEffect, useState } from 'react';
import { apiJson } from '../api';
import { formatDuration, formatMb, formatTime } from '../format';
import type { Miner, MinerView } from '../types';
import { Empty } from './common';

type Stats = Record<string, MinerView | 'error' | undefined>;

/** Each GPU of the wallet: online state, hardware, models, its last 24 h, suspension. */
export function Miners({ miners }: { miners: Miner[] }) {
  const [stats, setStats] = useState<Stats>({});

  useEffect(() => {
    const controller = new AbortController();
    setStats({});
    for (const miner of miners) {
      apiJson<MinerView>(`/api/v1/miners/${encodeURIComponent(miner.miner_id)}`, { signal: controller.signal }).then(
        (view) => setStats((old) => ({ ...old, [miner.miner_id]: view })),
        () => {
          if (!controller.signal.aborted) setStats((old) => ({ ...old, [miner.miner_id]: 'error' }));
        },
      );
    }
    return () => controller.abort();
  }, [miners]);

  const online = miners.filter((m) => m.online).length;

  return (
    <section aria-labelledby="miners-heading" className="card">
      <h2 id="miners-heading">GPUs</h2>
      {miners.length === 0 ? (
        <Empty testId="miners-empty">No GPU has mined for this wallet yet.</Empty>
      ) : (
        <>
          <p className="section-intro" data-testid="miners-summary">
            {online} of {miners.length} GPU{miners.length === 1 ? '' : 's'} online.
          </p>
          <div className="table-scroll">
            <table className="stack-table" data-testid="miners-table">
              <caption className="visually-hidden">The wallet's GPUs</caption>
              <thead>
                <tr>
                  <th scope="col">GPU</th>
                  <th scope="col">State</th>
                  <th scope="col">Hardware</th>
                  <th scope="col">Models</th>
                  <th scope="col" className="num">
                    Jobs (24 h)
                  </th>
                  <th scope="col" className="num">
                    Mean latency (24 h)
                  </th>
                  <th scope="col">Last seen</th>
                </tr>
              </thead>
              <tbody>
                {miners.map((miner) => {
                  const view = stats[miner.miner_id];
                  const loaded = view && view !== 'error' ? view : undefined;
                  return (
                    <tr
                      key={miner.miner_id}
                      data-testid="miner-row"
                      data-miner-id={miner.miner_id}
                      data-online={miner.online}
                    >
                      <th scope="row" data-label="GPU" className="block-label">
                        <span className="miner-rig">
                          {miner.rig} · GPU {miner.gpu_index}
                        </span>
                        <code className="miner-id" data-testid="miner-id">
                          {miner.miner_id}
                        </code>
                      </th>
                      <td data-label="State">
                        <span
                          className={`badge ${miner.online ? 'badge-online' : 'badge-offline'}`}
                          data-testid="miner-online"
                        >
                          {miner.online ? 'Online' : 'Offline'}
                        </span>
                        {miner.boosted && (
                          <span className="badge badge-boost" data-testid="miner-boosted">
                            Boosted
                          </span>
                        )}
                        {miner.suspension && (
                          <p className="suspension" data-testid="miner-suspension">
                            <span className="badge badge-danger">Suspended</span> since{' '}
                            {formatTime(miner.suspension.since_ms)}: {miner.suspension.reason}
                          </p>
                        )}
                      </td>
                      <td data-label="Hardware">
                        {miner.gpu} <span className="muted">({formatMb(miner.vram_mb)})</span>
                      </td>
                      <td data-label="Models" className="models-cell">
                        {miner.models.length ? miner.models.join(', ') : '—'}
                      </td>
                      <td data-label="Jobs (24 h)" className="num" data-testid="miner-jobs-24h">
                        {loaded ? loaded.jobs_24h : view === 'error' ? '—' : '…'}
                      </td>
                      <td data-label="Mean latency (24 h)" className="num" data-testid="miner-latency-24h">
                        {loaded ? formatDuration(loaded.mean_latency_ms_24h) : view === 'error' ? '—' : '…'}
                      </td>
                      <td data-label="Last seen">{formatTime(miner.last_seen_ms)}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </>
      )}
    </section>
  );
}
