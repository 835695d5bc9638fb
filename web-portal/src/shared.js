// Formatting and page sizes shared by the portal and its browser tests (plain JavaScript so
// `node --test` can import it as is): a test formats the API's numbers with the very functions
// the pages use, so what it compares is what people see.

/** Ledger rows per page (`limit` of `GET /api/v1/wallets/{address}/ledger`). */
export const LEDGER_PAGE_SIZE = 20;

/** Slashes listed on a wallet page (`limit` of `GET /api/v1/slashes`). */
export const SLASHES_LIMIT = 50;

/** Days of the points chart by default (`days` of `GET /api/v1/wallets/{address}/points-history`). */
export const HISTORY_DAYS = 30;

/** Rows of the leaderboard (`limit` of `GET /api/v1/leaderboard`). */
export const LEADERBOARD_LIMIT = 50;

const pointsFormat = new Intl.NumberFormat('en-US', {
  minimumFractionDigits: 0,
  maximumFractionDigits: 6,
  useGrouping: true,
});

/**
 * The one way the portal shows a points amount: the API's `points` number, rounded to at most
 * 6 decimals (1 micro-point), trailing zeros dropped, thousands grouped with commas, a leading
 * `-` for debits and never `-0`. Examples: 1234.5 → "1,234.5", 0.0000004 → "0",
 * -12.25 → "-12.25". Exact comparisons use the `micro` integers (`data-micro` attributes).
 *
 * @param {number} points
 * @returns {string}
 */
export function formatPoints(points) {
  if (!Number.isFinite(points)) return String(points);
  const rounded = Math.round(points * 1e6) / 1e6;
  return pointsFormat.format(rounded === 0 ? 0 : rounded);
}

const factorFormat = new Intl.NumberFormat('en-US', {
  minimumFractionDigits: 0,
  maximumFractionDigits: 6,
  useGrouping: false,
});

/**
 * A multiplier or factor as the portal shows it: `×` then the number with at most 6 decimals,
 * trailing zeros dropped (0.3 → "×0.3", 10 → "×10").
 *
 * @param {number} value
 * @returns {string}
 */
export function formatMultiplier(value) {
  return `×${factorFormat.format(value)}`;
}

/**
 * A plain number with at most `digits` decimals, trailing zeros dropped, no grouping.
 *
 * @param {number} value
 * @param {number} [digits]
 * @returns {string}
 */
export function formatDecimal(value, digits = 6) {
  if (!Number.isFinite(value)) return String(value);
  const f = Math.pow(10, digits);
  const rounded = Math.round(value * f) / f;
  return String(rounded === 0 ? 0 : rounded);
}
