import { useCallback, useEffect, useId, useState, type FormEvent } from 'react';
import { Link } from 'react-router';
import { ApiError, apiJson, errorMessage } from '../api';
import { formatTime } from '../format';
import {
  clearSession,
  loadSession,
  providerErrorMessage,
  signIn,
  walletProvider,
  WrongAccountError,
  type Session,
  type SignInStep,
} from '../session';
import type { MinerToken, MinerTokenCreated } from '../types';
import { Empty, ErrorMessage, Loading } from './common';

const RIG_NAME = /^[A-Za-z0-9_-]{1,32}$/;

const STEP_TEXT: Record<SignInStep, string> = {
  account: 'Asking your wallet for its account…',
  nonce: 'Getting a sign-in message from the coordinator…',
  sign: 'Sign the message in your wallet (it costs nothing and sends no transaction)…',
  verify: 'Checking the signature…',
};

function CopyButton({ text, label, testId }: { text: string; label: string; testId?: string }) {
  const [done, setDone] = useState<'copied' | 'failed' | null>(null);
  async function copy() {
    try {
      await navigator.clipboard.writeText(text);
      setDone('copied');
    } catch {
      setDone('failed');
    }
    window.setTimeout(() => setDone(null), 2500);
  }
  return (
    <span className="copy">
      <button type="button" className="button-secondary button-small" onClick={copy} data-testid={testId}>
        {label}
      </button>
      <span aria-live="polite" className="copy-status">
        {done === 'copied' ? 'Copied.' : done === 'failed' ? 'Copy failed: select the text and copy it.' : ''}
      </span>
    </span>
  );
}

function Minted({ minted, onDone }: { minted: MinerTokenCreated; onDone: () => void }) {
  return (
    <div className="minted" data-testid="minted-token" role="region" aria-labelledby="minted-heading">
      <h3 id="minted-heading">Token for rig “{minted.name}” minted</h3>
      <p className="notice notice-warning">
        This is the only time the token is shown. Copy it now and keep it private: anyone holding it
        mines for your wallet.
      </p>
      <p className="field-label" id="minted-token-label">
        Miner token
      </p>
      <pre className="secret" aria-labelledby="minted-token-label" data-testid="minted-token-value" tabIndex={0}>
        {minted.token}
      </pre>
      <CopyButton text={minted.token} label="Copy token" testId="copy-token" />
      <h4>Run the agent</h4>
      <ol className="steps" data-testid="agent-instructions">
        <li>
          Save this file as <code>agent.toml</code> on the rig:
          <pre className="config" data-testid="agent-config" tabIndex={0} aria-label="Agent configuration file">
            {minted.agent_config}
          </pre>
          <CopyButton text={minted.agent_config} label="Copy agent.toml" testId="copy-config" />
        </li>
        <li>
          List the models your GPUs serve in <code>models</code> (the <Link to="/rules">rules</Link> give
          each model's minimum GPU and memory) and put their files under <code>models/&lt;id&gt;/</code>, or set{' '}
          <code>models_dir</code>.
        </li>
        <li>
          Start it: <code>infermine-agent run --config agent.toml</code>. Your GPUs appear on this page once
          they connect.
        </li>
      </ol>
      <button type="button" className="button-secondary" onClick={onDone}>
        I have saved the token
      </button>
    </div>
  );
}

function TokenManager({ session, onSignedOut }: { session: Session; onSignedOut: (message?: string) => void }) {
  const [tokens, setTokens] = useState<MinerToken[] | null>(null);
  const [listError, setListError] = useState<Error | null>(null);
  const [name, setName] = useState('');
  const [nameProblem, setNameProblem] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [actionError, setActionError] = useState<Error | null>(null);
  const [minted, setMinted] = useState<MinerTokenCreated | null>(null);
  const [announce, setAnnounce] = useState('');
  const nameId = useId();
  const nameHintId = useId();

  const expired = useCallback(
    (e: unknown) => {
      if (e instanceof ApiError && e.status === 401) {
        clearSession(session.address);
        onSignedOut('Your session has ended: sign in again.');
        return true;
      }
      return false;
    },
    [session.address, onSignedOut],
  );

  const refresh = useCallback(async () => {
    try {
      const list = await apiJson<MinerToken[]>('/api/v1/miner-tokens', { token: session.token });
      setTokens(list);
      setListError(null);
    } catch (e) {
      if (!expired(e)) setListError(e as Error);
    }
  }, [session.token, expired]);

  useEffect(() => {
    void refresh();
  }, [refresh]);

  async function mint(event: FormEvent) {
    event.preventDefault();
    const rig = name.trim();
    if (!RIG_NAME.test(rig)) {
      setNameProblem('Use 1 to 32 letters, digits, “-” or “_”.');
      return;
    }
    setNameProblem(null);
    setBusy('mint');
    setActionError(null);
    setAnnounce('Minting a token…');
    try {
      const created = await apiJson<MinerTokenCreated>('/api/v1/miner-tokens', {
        method: 'POST',
        body: { name: rig },
        token: session.token,
      });
      setMinted(created);
      setName('');
      setAnnounce(`Token for rig ${created.name} minted. Copy it now: it is shown once.`);
      await refresh();
    } catch (e) {
      if (!expired(e)) {
        setActionError(e as Error);
        setAnnounce('');
      }
    } finally {
      setBusy(null);
    }
  }

  async function revoke(token: MinerToken) {
    setBusy(token.id);
    setActionError(null);
    setAnnounce(`Revoking the token of rig ${token.name}…`);
    try {
      await apiJson<MinerToken>(`/api/v1/miner-tokens/${encodeURIComponent(token.id)}`, {
        method: 'DELETE',
        token: session.token,
      });
      if (minted?.id === token.id) setMinted(null);
      await refresh();
      setAnnounce(`The token of rig ${token.name} is revoked: agents using it can no longer connect.`);
    } catch (e) {
      if (!expired(e)) {
        setActionError(e as Error);
        setAnnounce('');
      }
    } finally {
      setBusy(null);
    }
  }

  const live = tokens?.filter((t) => !t.revoked_ms) ?? [];

  return (
    <div data-testid="token-manager">
      <p className="signed-in" data-testid="signed-in">
        Signed in as <code>{session.address}</code> until {formatTime(session.expires_ms)}.{' '}
        <button
          type="button"
          className="button-link"
          onClick={() => {
            clearSession(session.address);
            onSignedOut();
          }}
        >
          Sign out
        </button>
      </p>
      <p className="visually-hidden" aria-live="polite" data-testid="tokens-status">
        {announce}
      </p>

      {minted && <Minted minted={minted} onDone={() => setMinted(null)} />}

      <form className="mint-form" onSubmit={mint} noValidate>
        <h3>Mint a token for a rig</h3>
        <label htmlFor={nameId}>Rig name</label>
        <div className="lookup-row">
          <input
            id={nameId}
            value={name}
            onChange={(e) => setName(e.target.value)}
            maxLength={32}
            autoComplete="off"
            spellCheck={false}
            aria-describedby={nameHintId}
            aria-invalid={nameProblem ? true : undefined}
            data-testid="mint-name"
          />
          <button type="submit" disabled={busy !== null} data-testid="mint-button">
            {busy === 'mint' ? 'Minting…' : 'Mint token'}
          </button>
        </div>
        <p id={nameHintId} className="hint">
          1 to 32 letters, digits, “-” or “_”, e.g. <code>rig-1</code>. Each rig gets its own token.
        </p>
        {nameProblem && (
          <p className="field-error" role="alert">
            {nameProblem}
          </p>
        )}
      </form>

      {actionError && <ErrorMessage error={actionError} title="That did not work" />}

      <h3>Your tokens</h3>
      {tokens === null && !listError && <Loading what="your tokens" />}
      {listError && <ErrorMessage error={listError} title="Your tokens could not be loaded" onRetry={refresh} />}
      {tokens !== null && tokens.length === 0 && <Empty testId="tokens-empty">No miner tokens yet.</Empty>}
      {tokens !== null && tokens.length > 0 && (
        <>
          <p className="muted" data-testid="tokens-summary">
            {live.length} live, {tokens.length - live.length} revoked.
          </p>
          <div className="table-scroll">
            <table className="stack-table" data-testid="tokens-table">
              <caption className="visually-hidden">Miner tokens, newest first</caption>
              <thead>
                <tr>
                  <th scope="col">Rig</th>
                  <th scope="col">Minted</th>
                  <th scope="col">State</th>
                  <th scope="col">
                    <span className="visually-hidden">Action</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {tokens.map((token) => (
                  <tr
                    key={token.id}
                    data-testid="token-row"
                    data-token-id={token.id}
                    data-revoked={token.revoked_ms ? 'true' : 'false'}
                    className={token.revoked_ms ? 'row-muted' : undefined}
                  >
                    <th scope="row" data-label="Rig">
                      {token.name}
                    </th>
                    <td data-label="Minted">{formatTime(token.created_ms)}</td>
                    <td data-label="State" data-testid="token-state">
                      {token.revoked_ms ? `Revoked ${formatTime(token.revoked_ms)}` : 'Live'}
                    </td>
                    <td data-label="Action">
                      {!token.revoked_ms && (
                        <button
                          type="button"
                          className="button-danger button-small"
                          onClick={() => revoke(token)}
                          disabled={busy !== null}
                          aria-label={`Revoke the token of rig ${token.name}`}
                          data-testid="token-revoke"
                        >
                          {busy === token.id ? 'Revoking…' : 'Revoke'}
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
    </div>
  );
}

/** Sign-in with the wallet, then mint and revoke its miner tokens. */
export function MinerTokens({ address }: { address: string }) {
  const [session, setSession] = useState<Session | null>(() => loadSession(address));
  const [step, setStep] = useState<SignInStep | null>(null);
  const [problem, setProblem] = useState<{ message: string; account?: string } | null>(null);
  const provider = walletProvider();

  useEffect(() => {
    setSession(loadSession(address));
    setProblem(null);
  }, [address]);

  async function start() {
    const wallet = walletProvider();
    if (!wallet) {
      setProblem({ message: 'No wallet found in this browser.' });
      return;
    }
    setProblem(null);
    try {
      setSession(await signIn(wallet, address, setStep));
    } catch (e) {
      if (e instanceof WrongAccountError) {
        setProblem({ message: e.message, account: e.account });
      } else if (e instanceof ApiError) {
        setProblem({ message: errorMessage(e) });
      } else {
        setProblem({ message: providerErrorMessage(e) });
      }
    } finally {
      setStep(null);
    }
  }

  return (
    <section aria-labelledby="tokens-heading" className="card" data-testid="miner-tokens">
      <h2 id="tokens-heading">Miner tokens</h2>
      {session ? (
        <TokenManager
          session={session}
          onSignedOut={(message) => {
            setSession(null);
            if (message) setProblem({ message });
          }}
        />
      ) : (
        <>
          <p className="section-intro">
            Is this your wallet? Sign in with it to mint a token for each of your rigs (with a ready
            agent configuration) and to revoke tokens you no longer use.
          </p>
          {provider ? (
            <button type="button" onClick={start} disabled={step !== null} data-testid="signin-button">
              {step ? 'Signing in…' : 'Sign in with your wallet'}
            </button>
          ) : (
            <p className="notice" data-testid="no-wallet">
              No wallet found in this browser. Install an EVM wallet extension (such as MetaMask) that
              holds this address, then reload the page to sign in.
            </p>
          )}
        </>
      )}
      <div aria-live="polite" data-testid="signin-status">
        {step && (
          <p className="status" role="status">
            <span className="spinner" aria-hidden="true" /> {STEP_TEXT[step]}
          </p>
        )}
      </div>
      {problem && (
        <div className="notice notice-error" role="alert" data-testid="signin-error">
          <p>{problem.message}</p>
          {problem.account && (
            <p>
              Switch to this address in your wallet, or open{' '}
              <Link to={`/wallet/${problem.account.toLowerCase()}`}>the page of {problem.account}</Link>.
            </p>
          )}
        </div>
      )}
    </section>
  );
}
