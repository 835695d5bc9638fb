import { useEffect, useId, useState, type FormEvent } from 'react';
import { Link, useParams, useSearchParams } from 'react-router';
import { ApiError, apiJson, query } from '../api';
import { clearAdminToken, loadAdminToken, saveAdminToken } from '../admin';
import { useLoad, useTitle } from '../hooks';
import { asRecord, checkLabel, formatTime, kindLabel, minerLabel, shortId } from '../format';
import { formatDecimal, formatPoints } from '../shared.js';
import type { Case, CasePage, CaseSlashResponse, Scope } from '../types';
import { Empty, ErrorMessage, Loading, PageHeading, Points } from '../components/common';
import { Evidence } from '../components/Evidence';

function TokenForm({ problem, onSave }: { problem: string | null; onSave: (token: string) => void }) {
  const [token, setToken] = useState('');
  const inputId = useId();
  const hintId = useId();
  function submit(event: FormEvent) {
    event.preventDefault();
    if (token.trim()) onSave(token.trim());
  }
  return (
    <form className="card token-form" onSubmit={submit} data-testid="admin-token-form">
      <h2>Admin sign-in</h2>
      <label htmlFor={inputId}>Admin token</label>
      <input
        id={inputId}
        type="password"
        autoComplete="off"
        spellCheck={false}
        value={token}
        onChange={(e) => setToken(e.target.value)}
        aria-describedby={hintId}
        required
        data-testid="admin-token-input"
      />
      <p id={hintId} className="hint">
        Paste a token from <code>infermine-server admin-token --name YOUR_NAME</code>. It stays in this
        browser tab only and is forgotten when the tab closes.
      </p>
      <button type="submit" data-testid="admin-token-submit">
        Continue
      </button>
      {problem && (
        <div className="notice notice-error" role="alert" data-testid="admin-token-error">
          <p>{problem}</p>
        </div>
      )}
    </form>
  );
}

const STATUSES = ['open', 'slashed', 'dismissed', 'all'] as const;

function StatusBadge({ status }: { status: string }) {
  const cls = status === 'open' ? 'badge-warn' : status === 'slashed' ? 'badge-danger' : 'badge-offline';
  return (
    <span className={`badge ${cls}`} data-testid="case-status">
      {status}
    </span>
  );
}

function CaseQueue({ token, onUnauthorized }: { token: string; onUnauthorized: (e: ApiError) => void }) {
  const [params, setParams] = useSearchParams();
  const statusParam = params.get('status');
  const status = (STATUSES as readonly string[]).includes(statusParam ?? '') ? statusParam! : 'open';
  const [extra, setExtra] = useState<{ cases: Case[]; cursor: string | null } | null>(null);
  const [moreError, setMoreError] = useState<Error | null>(null);
  const [loadingMore, setLoadingMore] = useState(false);
  const statusId = useId();

  const path = (cursor: string | null) =>
    `/api/v1/admin/cases${query({ status: status === 'all' ? undefined : status, cursor })}`;
  const page = useLoad(`${status}|${token}`, (signal) => apiJson<CasePage>(path(null), { token, signal }));

  useEffect(() => setExtra(null), [status]);
  useEffect(() => {
    if (page.state === 'error' && page.error instanceof ApiError && (page.error.status === 401 || page.error.status === 403)) {
      onUnauthorized(page.error);
    }
  }, [page.state, page.error, onUnauthorized]);

  const cases = page.state === 'ok' ? [...page.data.cases, ...(extra?.cases ?? [])] : [];
  const cursor = extra ? extra.cursor : page.state === 'ok' ? page.data.next_cursor ?? null : null;

  async function more() {
    if (!cursor) return;
    setLoadingMore(true);
    setMoreError(null);
    try {
      const next = await apiJson<CasePage>(path(cursor), { token });
      setExtra((old) => ({ cases: [...(old?.cases ?? []), ...next.cases], cursor: next.next_cursor ?? null }));
    } catch (e) {
      setMoreError(e as Error);
    } finally {
      setLoadingMore(false);
    }
  }

  return (
    <section aria-labelledby="queue-heading" className="card">
      <div className="section-head">
        <h2 id="queue-heading">Anti-cheat cases</h2>
        <div className="inline-field">
          <label htmlFor={statusId}>Status</label>
          <select
            id={statusId}
            value={status}
            onChange={(e) => setParams({ status: e.target.value }, { replace: true })}
            data-testid="case-status-filter"
          >
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s === 'all' ? 'All' : s[0]!.toUpperCase() + s.slice(1)}
              </option>
            ))}
          </select>
        </div>
      </div>
      {page.state === 'loading' && <Loading what="cases" />}
      {page.state === 'error' && <ErrorMessage error={page.error} title="Cases could not be loaded" onRetry={page.reload} />}
      {page.state === 'ok' && cases.length === 0 && (
        <Empty testId="cases-empty">{status === 'open' ? 'No open cases: the queue is clear.' : 'No cases.'}</Empty>
      )}
      {cases.length > 0 && (
        <div className="table-scroll">
          <table className="stack-table" data-testid="cases-table">
            <caption className="visually-hidden">Cases, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Opened</th>
                <th scope="col">Check</th>
                <th scope="col">Wallet</th>
                <th scope="col">GPU</th>
                <th scope="col">Status</th>
                <th scope="col">
                  <span className="visually-hidden">Open</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {cases.map((c) => (
                <tr key={c.id} data-testid="case-row" data-case-id={c.id} data-status={c.status}>
                  <td data-label="Opened">{formatTime(c.created_ms)}</td>
                  <td data-label="Check">
                    {checkLabel(c.check)} <span className={`kind kind-${c.kind}`}>{kindLabel(c.kind)}</span>
                  </td>
                  <td data-label="Wallet">
                    <code title={c.wallet}>{shortId(c.wallet)}</code>
                  </td>
                  <td data-label="GPU">{c.miner_id ? <code title={c.miner_id}>{minerLabel(c.miner_id, c.wallet)}</code> : '—'}</td>
                  <td data-label="Status">
                    <StatusBadge status={c.status} />
                  </td>
                  <td data-label="Case">
                    <Link to={`/admin/cases/${c.id}`} data-testid="case-open" aria-label={`Review case ${c.id}`}>
                      Review
                    </Link>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {moreError && <ErrorMessage error={moreError} title="More cases could not be loaded" />}
      {cursor && (
        <button type="button" className="button-secondary" onClick={more} disabled={loadingMore} data-testid="cases-load-more">
          {loadingMore ? 'Loading…' : 'Load more'}
        </button>
      )}
    </section>
  );
}

function SlashOutcome({ outcome }: { outcome: CaseSlashResponse }) {
  const kind = kindLabel(outcome.case.kind);
  return (
    <div className="notice notice-success" data-testid="slash-outcome" data-micro={outcome.amount.micro}>
      <p className="notice-title">Slashed</p>
      <p>
        Took <strong>{formatPoints(outcome.amount.points)}</strong> {kind} points (of{' '}
        {formatPoints(outcome.season_earned.points)} earned in season “{outcome.season.name}”). The wallet's{' '}
        {kind} balance is now <Points amount={outcome.balance_after} testId="slash-balance-after" />.
        {!outcome.recorded && ' The ledger already held this case\u2019s debit, so nothing more was taken.'}
      </p>
      <p>
        {outcome.suspended
          ? `The GPU is suspended${outcome.disconnected ? ' and its session was closed' : ''}.`
          : 'No GPU was suspended.'}
      </p>
    </div>
  );
}

function Decision({ item }: { item: Case }) {
  if (item.status === 'open') return null;
  const slash = item.slash;
  return (
    <section aria-labelledby="decision-heading" className="card" data-testid="case-decision">
      <h2 id="decision-heading">Decision</h2>
      <dl className="facts facts-wide">
        <div>
          <dt>Outcome</dt>
          <dd>
            <StatusBadge status={item.status} />
          </dd>
        </div>
        <div>
          <dt>By</dt>
          <dd>{item.decided_by ?? '—'}</dd>
        </div>
        <div>
          <dt>When</dt>
          <dd>{formatTime(item.decided_ms)}</dd>
        </div>
        {item.note && (
          <div>
            <dt>Note</dt>
            <dd data-testid="case-note">{item.note}</dd>
          </div>
        )}
        {slash?.amount && (
          <div>
            <dt>Taken</dt>
            <dd>
              <Points amount={slash.amount} testId="case-slash-amount" /> {kindLabel(item.kind)} points
            </dd>
          </div>
        )}
        {slash?.requested_fraction != null && (
          <div>
            <dt>Asked</dt>
            <dd>{formatDecimal(slash.requested_fraction * 100, 4)}% of the season's points</dd>
          </div>
        )}
        {slash?.requested_points != null && (
          <div>
            <dt>Asked</dt>
            <dd>{formatPoints(slash.requested_points)} points</dd>
          </div>
        )}
        {slash?.scope && (
          <div>
            <dt>Scope</dt>
            <dd>{slash.scope}</dd>
          </div>
        )}
      </dl>
    </section>
  );
}

/** How a slash is asked for: a share of the season's points, or a number of points. */
const SLASH_MODES = [
  { value: 'fraction', label: 'A share' },
  { value: 'points', label: 'Points' },
] as const;

type SlashMode = (typeof SLASH_MODES)[number]['value'];

function DecisionForms({
  item,
  token,
  onDecided,
}: {
  item: Case;
  token: string;
  onDecided: (item: Case, outcome?: CaseSlashResponse) => void;
}) {
  const [mode, setMode] = useState<SlashMode>('fraction');
  const [amount, setAmount] = useState('');
  const [scope, setScope] = useState<Scope>('wallet');
  const [note, setNote] = useState('');
  const [suspend, setSuspend] = useState(false);
  const [dismissNote, setDismissNote] = useState('');
  const [busy, setBusy] = useState<'slash' | 'dismiss' | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const ids = { amount: useId(), scope: useId(), note: useId(), suspend: useId(), dismiss: useId(), amountHint: useId() };

  async function slash(event: FormEvent) {
    event.preventDefault();
    const value = Number(amount);
    if (!amount.trim() || !Number.isFinite(value) || value <= 0 || (mode === 'fraction' && value > 1)) {
      setProblem(mode === 'fraction' ? 'Enter a share above 0 and at most 1, e.g. 0.5.' : 'Enter a number of points above 0.');
      return;
    }
    if (!note.trim()) {
      setProblem('Write a note: the miner sees it with the slash.');
      return;
    }
    setProblem(null);
    setError(null);
    setBusy('slash');
    try {
      const outcome = await apiJson<CaseSlashResponse>(`/api/v1/admin/cases/${encodeURIComponent(item.id)}/slash`, {
        method: 'POST',
        token,
        body: { [mode]: value, scope, note: note.trim(), suspend },
      });
      onDecided(outcome.case, outcome);
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(null);
    }
  }

  async function dismiss(event: FormEvent) {
    event.preventDefault();
    setError(null);
    setBusy('dismiss');
    try {
      const decided = await apiJson<Case>(`/api/v1/admin/cases/${encodeURIComponent(item.id)}/dismiss`, {
        method: 'POST',
        token,
        body: { note: dismissNote.trim() || null },
      });
      onDecided(decided);
    } catch (e) {
      setError(e as Error);
    } finally {
      setBusy(null);
    }
  }

  return (
    <section aria-labelledby="decide-heading" className="card" data-testid="case-decide">
      <h2 id="decide-heading">Decide</h2>
      <div className="decide-grid">
        <form onSubmit={slash} noValidate data-testid="slash-form" className="decide-form">
          <h3>Slash</h3>
          <fieldset className="segmented">
            <legend>Take</legend>
            {SLASH_MODES.map(({ value, label }) => (
              <label key={value} className={mode === value ? 'selected' : undefined}>
                <input
                  type="radio"
                  name="slash-mode"
                  value={value}
                  checked={mode === value}
                  onChange={() => setMode(value)}
                  data-testid={`slash-mode-${value}`}
                />
                {label}
              </label>
            ))}
          </fieldset>
          <label htmlFor={ids.amount}>{mode === 'fraction' ? 'Share (0 to 1)' : `${kindLabel(item.kind)} points`}</label>
          <input
            id={ids.amount}
            type="number"
            inputMode="decimal"
            min={0}
            max={mode === 'fraction' ? 1 : undefined}
            step="any"
            value={amount}
            onChange={(e) => setAmount(e.target.value)}
            aria-describedby={ids.amountHint}
            data-testid="slash-amount"
          />
          <p id={ids.amountHint} className="hint">
            {mode === 'fraction'
              ? `Of the ${kindLabel(item.kind)} points the scope earned this season; 1 takes them all.`
              : `At most what the scope earned this season.`}
          </p>
          <label htmlFor={ids.scope}>Scope</label>
          <select id={ids.scope} value={scope} onChange={(e) => setScope(e.target.value as Scope)} data-testid="slash-scope">
            <option value="wallet">The whole wallet</option>
            <option value="miner" disabled={!item.miner_id}>
              Only this case's GPU
            </option>
          </select>
          <label htmlFor={ids.note}>Note (shown to the miner)</label>
          <textarea id={ids.note} rows={3} value={note} onChange={(e) => setNote(e.target.value)} required data-testid="slash-note" />
          <div className="checkbox">
            <input
              id={ids.suspend}
              type="checkbox"
              checked={suspend}
              onChange={(e) => setSuspend(e.target.checked)}
              disabled={!item.miner_id}
              data-testid="slash-suspend"
            />
            <label htmlFor={ids.suspend}>Also suspend the GPU{item.miner_id ? '' : ' (the case names none)'}</label>
          </div>
          {problem && (
            <p className="field-error" role="alert" data-testid="slash-problem">
              {problem}
            </p>
          )}
          <button type="submit" className="button-danger" disabled={busy !== null} data-testid="slash-button">
            {busy === 'slash' ? 'Slashing…' : 'Slash'}
          </button>
        </form>
        <form onSubmit={dismiss} data-testid="dismiss-form" className="decide-form">
          <h3>Dismiss</h3>
          <p className="muted">No one is punished; the case closes.</p>
          <label htmlFor={ids.dismiss}>Note (optional)</label>
          <textarea
            id={ids.dismiss}
            rows={3}
            value={dismissNote}
            onChange={(e) => setDismissNote(e.target.value)}
            data-testid="dismiss-note"
          />
          <button type="submit" className="button-secondary" disabled={busy !== null} data-testid="dismiss-button">
            {busy === 'dismiss' ? 'Dismissing…' : 'Dismiss'}
          </button>
        </form>
      </div>
      <div aria-live="polite">{busy && <p role="status">{busy === 'slash' ? 'Slashing…' : 'Dismissing…'}</p>}</div>
      {error && <ErrorMessage error={error} title="The decision was not recorded" />}
    </section>
  );
}

function CaseDetail({ id, token, onUnauthorized }: { id: string; token: string; onUnauthorized: (e: ApiError) => void }) {
  const loaded = useLoad(`${id}|${token}`, (signal) =>
    apiJson<Case>(`/api/v1/admin/cases/${encodeURIComponent(id)}`, { token, signal }),
  );
  const [decided, setDecided] = useState<{ item: Case; outcome?: CaseSlashResponse } | null>(null);
  useEffect(() => setDecided(null), [id]);
  useEffect(() => {
    if (loaded.state === 'error' && loaded.error instanceof ApiError && (loaded.error.status === 401 || loaded.error.status === 403)) {
      onUnauthorized(loaded.error);
    }
  }, [loaded.state, loaded.error, onUnauthorized]);

  if (loaded.state === 'loading') return <Loading what="the case" />;
  if (loaded.state === 'error') return <ErrorMessage error={loaded.error} title="The case could not be loaded" onRetry={loaded.reload} />;
  const raw = decided?.item ?? loaded.data;
  // Evidence is free-form JSON: anything but an object is shown as an object holding it.
  const item: Case = asRecord(raw.evidence) ? raw : { ...raw, evidence: { value: raw.evidence ?? null } };

  return (
    <div data-testid="case-detail" data-case-id={item.id} data-status={item.status}>
      <section aria-labelledby="case-heading" className="card">
        <h2 id="case-heading">
          {checkLabel(item.check)} case <StatusBadge status={item.status} />
        </h2>
        <dl className="facts facts-wide">
          <div>
            <dt>Case</dt>
            <dd>
              <code>{item.id}</code>
            </dd>
          </div>
          <div>
            <dt>Wallet</dt>
            <dd>
              <Link to={`/wallet/${item.wallet}`} data-testid="case-wallet">
                {item.wallet}
              </Link>
            </dd>
          </div>
          <div>
            <dt>GPU</dt>
            <dd>{item.miner_id ? <code>{item.miner_id}</code> : '—'}</dd>
          </div>
          <div>
            <dt>Points at stake</dt>
            <dd>
              <span className={`kind kind-${item.kind}`}>{kindLabel(item.kind)}</span>
            </dd>
          </div>
          <div>
            <dt>Job</dt>
            <dd>{item.job_id ? <code>{item.job_id}</code> : '—'}</dd>
          </div>
          <div>
            <dt>Opened</dt>
            <dd>{formatTime(item.created_ms)}</dd>
          </div>
        </dl>
      </section>
      <div aria-live="polite" data-testid="decision-status">
        {decided?.outcome && <SlashOutcome outcome={decided.outcome} />}
        {decided && !decided.outcome && (
          <div className="notice notice-success" data-testid="dismiss-outcome">
            <p>The case is dismissed.</p>
          </div>
        )}
      </div>
      <Evidence item={item} token={token} />
      {item.status === 'open' ? (
        <DecisionForms item={item} token={token} onDecided={(c, outcome) => setDecided({ item: c, outcome })} />
      ) : (
        <Decision item={item} />
      )}
    </div>
  );
}

/** Anti-cheat review: the token form, the case queue, one case with its evidence and decision. */
export default function AdminPage() {
  const { caseId } = useParams();
  useTitle(caseId ? `Case ${shortId(caseId, 8, 4)}` : 'Admin');
  const [token, setToken] = useState<string | null>(() => loadAdminToken());
  const [whoami, setWhoami] = useState<string | null>(null);
  const [problem, setProblem] = useState<string | null>(null);

  useEffect(() => {
    if (!token) return;
    const controller = new AbortController();
    apiJson<{ name: string }>('/api/v1/admin/whoami', { token, signal: controller.signal }).then(
      (who) => setWhoami(who.name),
      (e) => {
        if (controller.signal.aborted) return;
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
          clearAdminToken();
          setToken(null);
          setProblem(e.message);
        }
      },
    );
    return () => controller.abort();
  }, [token]);

  const [unauthorized] = useState(() => (e: ApiError) => {
    clearAdminToken();
    setToken(null);
    setWhoami(null);
    setProblem(e.message);
  });

  return (
    <div>
      <PageHeading>{caseId ? 'Case review' : 'Admin'}</PageHeading>
      {!token ? (
        <TokenForm
          problem={problem}
          onSave={(value) => {
            saveAdminToken(value);
            setProblem(null);
            setToken(value);
          }}
        />
      ) : (
        <>
          <p className="signed-in" data-testid="admin-signed-in">
            {whoami ? (
              <>
                Signed in as <strong>{whoami}</strong>.
              </>
            ) : (
              'Admin token set.'
            )}{' '}
            <button
              type="button"
              className="button-link"
              onClick={() => {
                clearAdminToken();
                setToken(null);
                setWhoami(null);
              }}
              data-testid="admin-forget"
            >
              Forget the token
            </button>
          </p>
          {caseId ? (
            <>
              <p>
                <Link to="/admin">← All cases</Link>
              </p>
              <CaseDetail id={caseId} token={token} onUnauthorized={unauthorized} />
            </>
          ) : (
            <CaseQueue token={token} onUnauthorized={unauthorized} />
          )}
        </>
      )}
    </div>
  );
}
