// Display helpers besides points (points and multipliers are in shared.js).

const ADDRESS = /^0x[0-9a-fA-F]{40}$/;

/** Whether `text` looks like an EVM address: 0x and 40 hex digits, any case. */
export function isAddress(text: string): boolean {
  return ADDRESS.test(text);
}

function pad(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** A moment in UTC, to the minute: "2025-03-01 14:05 UTC". */
export function formatTime(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return '—';
  return `${formatDay(ms)} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`;
}

/** A UTC day: "2025-03-01". */
export function formatDay(ms: number): string {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

/** Milliseconds for people: "850 ms", "1.25 s", "12.3 s", "3 min". */
export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${trim(ms / 1000, ms < 10_000 ? 2 : 1)} s`;
  return `${trim(ms / 60_000, 1)} min`;
}

function trim(value: number, digits: number): string {
  return String(Number(value.toFixed(digits)));
}

/** "0x5aed…767de": a long id shortened for narrow cells (the full one goes in a title). */
export function shortId(id: string, head = 6, tail = 4): string {
  return id.length <= head + tail + 1 ? id : `${id.slice(0, head)}…${id.slice(-tail)}`;
}

/** Memory as the API counts it, in MB: "24,105 MB". */
export function formatMb(mb: number): string {
  return `${mb.toLocaleString('en-US')} MB`;
}

export function kindLabel(kind: string): string {
  if (kind === 'waifu') return 'Waifu';
  if (kind === 'llama') return 'Llama';
  return kind;
}

export function checkLabel(check: string): string {
  const labels: Record<string, string> = {
    image_similarity: 'Image similarity',
    llm_teacher_forcing: 'LLM teacher forcing',
    usage_mismatch: 'Usage mismatch',
    latency: 'Latency',
    throughput: 'Throughput',
    challenge: 'Model-file challenge',
    probe: 'Probe',
  };
  return labels[check] ?? check;
}

export function asNumber(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

export function asString(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

export function asRecord(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

/**
 * A GPU's id (`<wallet>-<rig>-gpu<N>`) without the wallet, when the wallet is known from the
 * context: "rig1-gpu0".
 */
export function minerLabel(minerId: string, wallet?: string): string {
  const prefix = wallet ? `${wallet.toLowerCase()}-` : '';
  if (prefix && minerId.toLowerCase().startsWith(prefix)) return minerId.slice(prefix.length);
  const match = /^0x[0-9a-fA-F]{40}-(.+)$/.exec(minerId);
  return match ? match[1]! : minerId;
}
