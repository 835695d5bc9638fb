import { apiJson, query } from '../api';
import { useLoad } from '../hooks';
import { SLASHES_LIMIT } from '../shared.js';
import { formatTime, kindLabel, shortId } from '../format';
import type { EntryPage } from '../types';
import { Empty, ErrorMessage, Loading, Points } from './common';

/** The wallet's slashes with their reasons (`GET /api/v1/slashes?address=`). */
export function Slashes({ address }: { address: string }) {
  const slashes = useLoad(address, (signal) =>
    apiJson<EntryPage>(`/api/v1/slashes${query({ address, limit: SLASHES_LIMIT })}`, { signal }),
  );
  return (
    <section aria-labelledby="slashes-heading" className="card">
      <h2 id="slashes-heading">Slashes</h2>
      {slashes.state === 'loading' && <Loading what="slashes" />}
      {slashes.state === 'error' && (
        <ErrorMessage error={slashes.error} title="Slashes could not be loaded" onRetry={slashes.reload} />
      )}
      {slashes.state === 'ok' &&
        (slashes.data.entries.length === 0 ? (
          <Empty testId="slashes-empty">No slashes: this wallet's work has never been found wanting.</Empty>
        ) : (
          <>
            <div className="table-scroll">
              <table className="stack-table" data-testid="slashes-table">
                <caption className="visually-hidden">Slashes, newest first</caption>
                <thead>
                  <tr>
                    <th scope="col">When</th>
                    <th scope="col">Kind</th>
                    <th scope="col">Reason</th>
                    <th scope="col">Case</th>
                    <th scope="col" className="num">
                      Points
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {slashes.data.entries.map((entry) => (
                    <tr key={entry.id} data-testid="slash-row" data-entry-id={entry.id} data-case-id={entry.case_id ?? ''}>
                      <td data-label="When">{formatTime(entry.created_ms)}</td>
                      <td data-label="Kind">
                        <span className={`kind kind-${entry.kind}`}>{kindLabel(entry.kind)}</span>
                      </td>
                      <td data-label="Reason" data-testid="slash-reason">
                        {entry.reason ?? '—'}
                      </td>
                      <td data-label="Case">
                        {entry.case_id ? <code title={entry.case_id}>{shortId(entry.case_id, 8, 4)}</code> : '—'}
                      </td>
                      <td data-label="Points" className="num">
                        <Points amount={entry.amount} testId="slash-amount" />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            {slashes.data.next_cursor && (
              <p className="muted">The {SLASHES_LIMIT} most recent slashes are shown; the ledger above lists them all.</p>
            )}
          </>
        ))}
    </section>
  );
}
