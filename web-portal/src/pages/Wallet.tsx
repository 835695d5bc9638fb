import { useId, useState } from 'react';
import { Link, useParams } from 'react-router';
import { apiJson, query } from '../api';
import { useLoad, useTitle } from '../hooks';
import { HISTORY_DAYS, formatMultiplier } from '../shared.js';
import { formatTime, shortId } from '../format';
import type { EntryPage, History, WalletView } from '../types';
import { ErrorMessage, Loading, PageHeading, Points } from '../components/common';
import { PointsChart } from '../components/PointsChart';
import { Ledger } from '../components/Ledger';
import { Miners } from '../components/Miners';
import { Slashes } from '../components/Slashes';
import { MinerTokens } from '../components/MinerTokens';

interface Loaded {
  wallet: WalletView;
  /** Nothing mined: no ledger row and no GPU. */
  empty: boolean;
}

function seasonWindow(wallet: WalletView): string {
  const { starts_ms, ends_ms } = wallet.season;
  if (!starts_ms && !ends_ms) return 'since the start';
  return `${formatTime(starts_ms)} to ${ends_ms ? formatTime(ends_ms) : 'now'}`;
}

/** The two kinds of points, in the order the balances table shows them. */
const BALANCE_ROWS = [
  { kind: 'waifu', label: 'Waifu', work: 'images' },
  { kind: 'llama', label: 'Llama', work: 'LLMs' },
] as const;

function BalancesCard({ wallet }: { wallet: WalletView }) {
  return (
    <section aria-labelledby="balances-heading" className="card">
      <h2 id="balances-heading">Balances</h2>
      <div className="table-scroll">
        <table className="balances" data-testid="balances">
          <caption className="visually-hidden">Points balances, all time and in the current season</caption>
          <thead>
            <tr>
              <th scope="col">
                <span className="visually-hidden">Kind</span>
              </th>
              <th scope="col" className="num">
                All time
              </th>
              <th scope="col" className="num">
                This season
                <span className="season-name muted" data-testid="season-name">
                  {wallet.season.name}
                </span>
              </th>
            </tr>
          </thead>
          <tbody>
            {BALANCE_ROWS.map(({ kind, label, work }) => (
              <tr key={kind}>
                <th scope="row">
                  <span className={`kind kind-${kind}`}>{label}</span> <span className="muted">{work}</span>
                </th>
                <td className="num big">
                  <Points amount={wallet.balances[kind]} testId={`balance-${kind}-all`} />
                </td>
                <td className="num big">
                  <Points amount={wallet.season[kind]} testId={`balance-${kind}-season`} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <p className="muted">
        Season “{wallet.season.name}”: {seasonWindow(wallet)}. Balances are accruals less slashes.
      </p>
    </section>
  );
}

function BoostCard({ wallet }: { wallet: WalletView }) {
  const boost = wallet.boost;
  const active = boost.nft_held > 0 || boost.stheu_held > 0;
  return (
    <section aria-labelledby="boost-heading" className="card" data-testid="boost">
      <h2 id="boost-heading">Boost</h2>
      {active ? (
        <>
          <dl className="facts facts-wide">
            <div>
              <dt>NFTs held</dt>
              <dd data-testid="boost-nft-held">{boost.nft_held}</dd>
            </div>
            <div>
              <dt>NFT multiplier</dt>
              <dd data-testid="boost-nft-multiplier">{formatMultiplier(boost.nft_multiplier)}</dd>
            </div>
            <div>
              <dt>GPUs it may boost</dt>
              <dd data-testid="boost-gpus-covered">{boost.gpus_covered}</dd>
            </div>
            {boost.stheu_held > 0 && (
              <div>
                <dt>stHEU held</dt>
                <dd>
                  {boost.stheu_held} ({formatMultiplier(boost.stheu_multiplier)})
                </dd>
              </div>
            )}
          </dl>
          {boost.boosted_miners.length > 0 ? (
            <>
              <p>Boosted now, earliest seen first:</p>
              <ul className="plain-list" data-testid="boosted-miners">
                {boost.boosted_miners.map((id) => (
                  <li key={id}>
                    <code title={id}>{id}</code>
                  </li>
                ))}
              </ul>
            </>
          ) : (
            <p className="muted">No GPU of this wallet is boosted yet.</p>
          )}
        </>
      ) : (
        <p className="muted" data-testid="boost-none">
          No NFT boost: this wallet holds no NFT. The <Link to="/rules">rules</Link> say how NFTs
          boost a wallet's GPUs.
        </p>
      )}
    </section>
  );
}

function HistoryCard({ address }: { address: string }) {
  const [days, setDays] = useState(HISTORY_DAYS);
  const daysId = useId();
  const history = useLoad(`${address}|${days}`, (signal) =>
    apiJson<History>(
      `/api/v1/wallets/${encodeURIComponent(address)}/points-history${query({ bucket: 'day', days })}`,
      { signal },
    ),
  );
  return (
    <section aria-labelledby="history-heading" className="card">
      <div className="section-head">
        <h2 id="history-heading">Points per day</h2>
        <div className="inline-field">
          <label htmlFor={daysId}>Period</label>
          <select id={daysId} value={days} onChange={(e) => setDays(Number(e.target.value))} data-testid="history-days">
            {[7, 30, 90, 365].map((d) => (
              <option key={d} value={d}>
                Last {d} days
              </option>
            ))}
          </select>
        </div>
      </div>
      {history.state === 'loading' && <Loading what="points history" />}
      {history.state === 'error' && (
        <ErrorMessage error={history.error} title="The history could not be loaded" onRetry={history.reload} />
      )}
      {history.state === 'ok' && <PointsChart series={history.data.series} days={days} />}
    </section>
  );
}

export default function WalletPage() {
  const { address = '' } = useParams();
  useTitle(`Wallet ${shortId(address)}`);
  const wallet = useLoad(address, async (signal): Promise<Loaded> => {
    const path = `/api/v1/wallets/${encodeURIComponent(address)}`;
    const [view, first] = await Promise.all([
      apiJson<WalletView>(path, { signal }),
      apiJson<EntryPage>(`${path}/ledger${query({ limit: 1 })}`, { signal }),
    ]);
    return { wallet: view, empty: view.miners.length === 0 && first.entries.length === 0 };
  });

  return (
    <div className="wallet-page">
      <PageHeading>Wallet</PageHeading>
      <p className="address" data-testid="wallet-address">
        <code>{wallet.state === 'ok' ? wallet.data.wallet.address : address}</code>
      </p>
      {wallet.state === 'loading' && <Loading what="the wallet" />}
      {wallet.state === 'error' && (
        <ErrorMessage error={wallet.error} title="This wallet could not be shown" onRetry={wallet.reload} />
      )}
      {wallet.state === 'ok' && (
        <>
          {wallet.data.empty && (
            <div className="notice" data-testid="wallet-empty" role="status">
              <p className="notice-title">Nothing mined yet</p>
              <p>
                This is a valid address, but no GPU has earned points for it. Points appear here once a
                rig mines with a token minted for this wallet; if it is yours, sign in below to mint one.
              </p>
            </div>
          )}
          <BalancesCard wallet={wallet.data.wallet} />
          {!wallet.data.empty && (
            <>
              <HistoryCard address={address} />
              <Ledger address={address} />
              <Miners miners={wallet.data.wallet.miners} />
            </>
          )}
          <BoostCard wallet={wallet.data.wallet} />
          {!wallet.data.empty && <Slashes address={address} />}
          <MinerTokens address={wallet.data.wallet.address} />
        </>
      )}
      {wallet.state !== 'ok' && wallet.state !== 'loading' && (
        <p data-testid="wallet-back">
          <Link to="/">Look up another wallet</Link>
        </p>
      )}
    </div>
  );
}
