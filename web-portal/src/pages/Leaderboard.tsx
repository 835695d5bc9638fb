import { useId } from 'react';
import { Link, useSearchParams } from 'react-router';
import { apiJson, query } from '../api';
import { useLoad, useTitle } from '../hooks';
import { LEADERBOARD_LIMIT } from '../shared.js';
import { kindLabel } from '../format';
import type { Leaderboard, PointsKind } from '../types';
import { Empty, ErrorMessage, Loading, PageHeading, Points } from '../components/common';

const PERIODS = [
  { id: '24h', label: 'Last 24 hours' },
  { id: '7d', label: 'Last 7 days' },
  { id: 'season', label: 'This season' },
  { id: 'all', label: 'All time' },
] as const;

const KINDS: PointsKind[] = ['waifu', 'llama'];

/** Wallets by net points, per kind and period; both live in the URL (`?kind=&period=`). */
export default function LeaderboardPage() {
  useTitle('Leaderboard');
  const [params, setParams] = useSearchParams();
  const kind: PointsKind = params.get('kind') === 'llama' ? 'llama' : 'waifu';
  const periodParam = params.get('period');
  const period = PERIODS.some((p) => p.id === periodParam) ? periodParam! : '7d';
  const periodId = useId();

  const board = useLoad(`${kind}|${period}`, (signal) =>
    apiJson<Leaderboard>(`/api/v1/leaderboard${query({ kind, period, limit: LEADERBOARD_LIMIT })}`, { signal }),
  );

  function choose(next: { kind?: PointsKind; period?: string }) {
    const search = new URLSearchParams(params);
    search.set('kind', next.kind ?? kind);
    search.set('period', next.period ?? period);
    setParams(search, { replace: true });
  }

  const periodLabel = PERIODS.find((p) => p.id === period)?.label ?? period;

  return (
    <div>
      <PageHeading>Leaderboard</PageHeading>
      <div className="controls">
        <fieldset className="segmented">
          <legend>Points</legend>
          {KINDS.map((k) => (
            <label key={k} className={k === kind ? 'selected' : undefined}>
              <input
                type="radio"
                name="kind"
                value={k}
                checked={k === kind}
                onChange={() => choose({ kind: k })}
                data-testid={`leaderboard-kind-${k}`}
              />
              {kindLabel(k)}
            </label>
          ))}
        </fieldset>
        <div className="inline-field">
          <label htmlFor={periodId}>Period</label>
          <select
            id={periodId}
            value={period}
            onChange={(e) => choose({ period: e.target.value })}
            data-testid="leaderboard-period"
          >
            {PERIODS.map((p) => (
              <option key={p.id} value={p.id}>
                {p.label}
              </option>
            ))}
          </select>
        </div>
      </div>
      <section
        aria-labelledby="board-heading"
        aria-busy={board.state === 'loading'}
        className="card"
        data-testid="leaderboard"
        data-kind={kind}
        data-period={period}
      >
        <h2 id="board-heading">
          {kindLabel(kind)} points, {periodLabel.toLowerCase()}
        </h2>
        {board.state === 'loading' && <Loading what="the leaderboard" />}
        {board.state === 'error' && (
          <ErrorMessage error={board.error} title="The leaderboard could not be loaded" onRetry={board.reload} />
        )}
        {board.state === 'ok' &&
          (board.data.rows.length === 0 ? (
            <Empty testId="leaderboard-empty">No wallet earned {kindLabel(kind)} points in this period.</Empty>
          ) : (
            <div className="table-scroll">
              <table data-testid="leaderboard-table" className="leaderboard">
                <caption className="visually-hidden">
                  Wallets ranked by net {kindLabel(kind)} points, {periodLabel.toLowerCase()}
                </caption>
                <thead>
                  <tr>
                    <th scope="col" className="num">
                      Rank
                    </th>
                    <th scope="col">Wallet</th>
                    <th scope="col" className="num">
                      Points
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {board.data.rows.map((row) => (
                    <tr key={row.address} data-testid="leaderboard-row" data-address={row.address} data-rank={row.rank}>
                      <td className="num" data-testid="leaderboard-rank">
                        {row.rank}
                      </td>
                      <td className="address-cell">
                        <Link to={`/wallet/${row.address}`} data-testid="leaderboard-address">
                          {row.address}
                        </Link>
                      </td>
                      <td className="num">
                        <Points amount={row.points} testId="leaderboard-points" />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ))}
      </section>
    </div>
  );
}
