// Shapes of the coordinator's portal API (see openapi/openapi.json at the repository root).

export type PointsKind = 'waifu' | 'llama';
export const POINTS_KINDS: readonly PointsKind[] = ['waifu', 'llama'];

export interface Amount {
  /** Micro-points (1 point = 1,000,000): exact. */
  micro: number;
  /** Points, for display. */
  points: number;
}

export interface Balances {
  waifu: Amount;
  llama: Amount;
}

export interface SeasonWindow {
  name: string;
  starts_ms: number;
  ends_ms?: number | null;
}

export interface SeasonBalances extends SeasonWindow, Balances {}

export interface Suspension {
  since_ms: number;
  reason: string;
}

export interface Miner {
  miner_id: string;
  wallet: string;
  rig: string;
  gpu_index: number;
  gpu: string;
  vram_mb: number;
  models: string[];
  online: boolean;
  first_seen_ms: number;
  last_seen_ms: number;
  boosted: boolean;
  suspension?: Suspension | null;
}

export interface MinerView extends Miner {
  jobs_24h: number;
  mean_latency_ms_24h?: number | null;
}

export interface Boost {
  nft_held: number;
  nft_multiplier: number;
  gpus_covered: number;
  stheu_held: number;
  stheu_multiplier: number;
  boosted_miners: string[];
}

export interface WalletView {
  address: string;
  balances: Balances;
  season: SeasonBalances;
  miners: Miner[];
  boost: Boost;
}

export interface Entry {
  id: number;
  wallet: string;
  kind: PointsKind | string;
  entry: 'accrual' | 'slash' | string;
  amount: Amount;
  detail: Record<string, unknown>;
  created_ms: number;
  case_id?: string | null;
  job_id?: string | null;
  miner_id?: string | null;
  model?: string | null;
  reason?: string | null;
}

export interface EntryPage {
  entries: Entry[];
  next_cursor?: string | null;
}

export interface HistoryPoint {
  start_ms: number;
  waifu: Amount;
  llama: Amount;
}

export interface History {
  address: string;
  bucket: string;
  series: HistoryPoint[];
}

export interface LeaderboardRow {
  rank: number;
  address: string;
  points: Amount;
}

export interface Leaderboard {
  kind: PointsKind;
  period: string;
  rows: LeaderboardRow[];
}

export interface ModelRule {
  id: string;
  multiplier: number;
  discontinued: boolean;
  min_gpu: string[];
  min_gpu_tier: number;
  min_vram_mb: number;
  target_latency_ms: number;
  deadline_ms: number;
  points_kind?: PointsKind | null;
}

export interface BoostTier {
  min_held: number;
  multiplier: number;
}

export interface Rules {
  formulas: { waifu: string; llama: string; latency: string; unit: string };
  models: ModelRule[];
  gpu_tiers: { name: string; tier: number }[];
  boosts: { gpus_per_nft: number; nft: BoostTier[]; stheu: BoostTier[] };
  seasons: { current: SeasonWindow; all: SeasonWindow[]; slashing: string };
}

export interface IssuedNonce {
  nonce: string;
  message: string;
  expires_ms: number;
}

export interface VerifyResponse {
  token: string;
  address: string;
  expires_ms: number;
}

export interface MinerToken {
  id: string;
  name: string;
  created_ms: number;
  revoked_ms?: number | null;
}

export interface MinerTokenCreated {
  id: string;
  name: string;
  token: string;
  agent_config: string;
}

export type CaseStatus = 'open' | 'slashed' | 'dismissed';
export type Scope = 'wallet' | 'miner';

export interface CaseSlash {
  amount?: Amount | null;
  ledger_entry_id?: number | null;
  requested_fraction?: number | null;
  requested_points?: number | null;
  scope?: Scope | null;
  season?: string | null;
}

export interface Case {
  id: string;
  wallet: string;
  kind: string;
  check: string;
  evidence: Record<string, unknown>;
  status: CaseStatus;
  created_ms: number;
  decided_by?: string | null;
  decided_ms?: number | null;
  job_id?: string | null;
  miner_id?: string | null;
  note?: string | null;
  slash?: CaseSlash | null;
}

export interface CasePage {
  cases: Case[];
  next_cursor?: string | null;
}

export interface CaseSlashResponse {
  case: Case;
  amount: Amount;
  recorded: boolean;
  season: SeasonWindow;
  season_earned: Amount;
  balance_after: Amount;
  suspended: boolean;
  disconnected: boolean;
}

export interface JobObjectView {
  name: string;
  key: string;
  size_bytes: number;
  sha256: string;
}

export interface JobObjects {
  job: string;
  objects: JobObjectView[];
}

export interface TokenScore {
  id: number;
  logprob: number;
  rank: number;
  in_support: boolean;
  sample_logprob: number;
  expected_logprob: number;
  logprob_variance: number;
  seeded: number;
}
