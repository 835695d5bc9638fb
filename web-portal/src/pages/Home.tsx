import { useId, useState, type FormEvent } from 'react';
import { Link, useNavigate } from 'react-router';
import { PageHeading } from '../components/common';
import { isAddress } from '../format';
import { useTitle } from '../hooks';

/** Look-up by wallet address: no sign-in needed to see a wallet's points. */
export function Home() {
  useTitle('');
  const navigate = useNavigate();
  const [address, setAddress] = useState('');
  const [problem, setProblem] = useState<string | null>(null);
  const inputId = useId();
  const hintId = useId();
  const problemId = useId();

  function submit(event: FormEvent) {
    event.preventDefault();
    const value = address.trim();
    if (!isAddress(value)) {
      setProblem(
        value
          ? `“${value}” is not a wallet address: it should be 0x followed by 40 hexadecimal digits.`
          : 'Enter a wallet address.',
      );
      return;
    }
    setProblem(null);
    navigate(`/wallet/${value.toLowerCase()}`);
  }

  return (
    <div className="home">
      <PageHeading>Your mining points</PageHeading>
      <p className="lead">
        Look up any wallet to see its <strong>Waifu points</strong> (image jobs) and{' '}
        <strong>Llama points</strong> (LLM jobs), what each point was earned for, its GPUs and any
        slashes. No sign-in needed.
      </p>
      <form className="lookup" onSubmit={submit} noValidate role="search" aria-label="Wallet look-up">
        <label htmlFor={inputId}>Wallet address</label>
        <div className="lookup-row">
          <input
            id={inputId}
            name="address"
            type="text"
            inputMode="text"
            autoComplete="off"
            autoCapitalize="off"
            spellCheck={false}
            placeholder="0x…"
            value={address}
            onChange={(e) => setAddress(e.target.value)}
            aria-describedby={problem ? `${hintId} ${problemId}` : hintId}
            aria-invalid={problem ? true : undefined}
            data-testid="lookup-input"
          />
          <button type="submit" data-testid="lookup-submit">
            Look up
          </button>
        </div>
        <p id={hintId} className="hint">
          0x followed by 40 hexadecimal digits, as your wallet shows it.
        </p>
        <div aria-live="polite">
          {problem && (
            <p id={problemId} className="field-error" data-testid="lookup-error">
              {problem}
            </p>
          )}
        </div>
      </form>
      <section className="home-links" aria-labelledby="more-heading">
        <h2 id="more-heading">More</h2>
        <ul>
          <li>
            <Link to="/leaderboard">Leaderboard</Link>: the wallets that earned most, per kind and period.
          </li>
          <li>
            <Link to="/rules">Rules</Link>: how points are counted, each model's multiplier, GPU tiers and boosts.
          </li>
          <li>
            Mining? Open your wallet's page and sign in with your wallet to mint a miner token for your rig.
          </li>
        </ul>
      </section>
    </div>
  );
}
