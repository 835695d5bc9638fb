// The leaderboard and rules pages against the API, and deep links: every page loads at its
// own URL and survives a reload.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LEADERBOARD_LIMIT, formatMultiplier, formatPoints } from '../src/shared.js';
import { api, micro, need, newPage, problemsOf, screenshot, suiteBrowser } from './helpers.mjs';

describe('leaderboard, rules and deep links', () => {
  const browser = suiteBrowser();


  const boardUrl = (kind, period) => `/api/v1/leaderboard?kind=${kind}&period=${period}&limit=${LEADERBOARD_LIMIT}`;

  /**
   * Shows the board with `show` and checks it equals the API's. The API is read before and
   * after the page loads; if the two reads differ (the server credited or slashed in
   * between), the page is shown again, so a change in the ledger cannot fail the test.
   */
  async function expectBoard(page, kind, period, show) {
    for (let attempt = 1; ; attempt++) {
      const before = await api(boardUrl(kind, period));
      await show();
      const shown = await shownBoard(page, kind, period);
      const after = await api(boardUrl(kind, period));
      if (JSON.stringify(before.rows) !== JSON.stringify(after.rows) && attempt < 5) continue;
      assert.deepEqual(shown, after.rows.map((row) => ({
        address: row.address,
        rank: String(row.rank),
        micro: row.points.micro,
        text: formatPoints(row.points.points),
      })), `${kind}/${period} board`);
      return after;
    }
  }

  /** The rows of the loaded board for this kind and period (never an earlier board's). */
  async function shownBoard(page, kind, period) {
    const board = page.locator(
      `[data-testid="leaderboard"][data-kind="${kind}"][data-period="${period}"][aria-busy="false"]`,
    );
    await board.waitFor();
    const rows = board.getByTestId('leaderboard-row');
    if ((await rows.count()) === 0) {
      await board.getByTestId('leaderboard-empty').waitFor();
      return [];
    }
    const shown = [];
    for (const row of await rows.all()) {
      const points = row.getByTestId('leaderboard-points');
      shown.push({
        address: await row.getAttribute('data-address'),
        rank: await row.getByTestId('leaderboard-rank').textContent(),
        micro: await micro(points),
        text: await points.textContent(),
      });
    }
    return shown;
  }

  it('shows the leaderboard rows the API gives, per kind and period', async () => {
    const page = await newPage(browser());
    let nonEmpty = 0;
    for (const kind of ['waifu', 'llama']) {
      for (const period of ['24h', '7d', 'season', 'all']) {
        const board = await expectBoard(page, kind, period, () => page.goto(`/leaderboard?kind=${kind}&period=${period}`));
        nonEmpty += board.rows.length > 0 ? 1 : 0;
      }
    }
    assert.ok(nonEmpty > 0, 'the seeded server has leaderboard rows');
    // The controls change the URL and the rows.
    await expectBoard(page, 'llama', 'all', async () => {
      await page.goto('/leaderboard');
      await page.getByTestId('leaderboard-kind-llama').check();
      await page.getByTestId('leaderboard-period').selectOption('all');
      await page.waitForURL(/kind=llama/);
      assert.match(page.url(), /period=all/);
    });
    await screenshot(page, 'leaderboard');
    assert.deepEqual(problemsOf(page), []);
  });

  it("shows each model's multiplier and the tables from /api/v1/rules", async () => {
    const rules = await api('/api/v1/rules');
    const page = await newPage(browser());
    await page.goto('/rules');
    await page.getByTestId('rule-model-row').first().waitFor();
    assert.equal(await page.getByTestId('rule-model-row').count(), rules.models.length);
    for (const model of rules.models) {
      const row = page.locator(`[data-testid="rule-model-row"][data-model-id="${model.id}"]`);
      assert.equal(await row.count(), 1, `a row for ${model.id}`);
      assert.equal(await row.getByTestId('rule-multiplier').textContent(), formatMultiplier(model.multiplier), model.id);
    }
    assert.equal(await page.getByTestId('formula-waifu').textContent(), rules.formulas.waifu);
    assert.equal(await page.getByTestId('formula-llama').textContent(), rules.formulas.llama);
    assert.equal(await page.getByTestId('formula-latency').textContent(), rules.formulas.latency);
    if (rules.boosts.nft.length) {
      assert.equal(await page.getByTestId('boost-nft-table').locator('tbody tr').count(), rules.boosts.nft.length);
    }
    assert.match(await page.getByTestId('gpus-per-nft').textContent(), new RegExp(`up to ${rules.boosts.gpus_per_nft} `));
    await screenshot(page, 'rules');
    assert.deepEqual(problemsOf(page), []);
  });

  it('loads every page at its own URL and again on reload', async () => {
    const wallet = need('PORTAL_WALLET').toLowerCase();
    const adminToken = need('PORTAL_ADMIN_TOKEN');
    const caseId = need('PORTAL_CASE_ID');
    const page = await newPage(browser());
    /** @type {[string, string][]} */
    const pages = [
      ['/', 'lookup-input'],
      [`/wallet/${wallet}`, 'balance-waifu-all'],
      ['/leaderboard?kind=llama&period=all', 'leaderboard-period'],
      ['/rules', 'rule-model-row'],
      ['/admin', 'admin-token-form'],
      ['/no/such/page', 'not-found'],
    ];
    for (const [path, marker] of pages) {
      const response = await page.goto(path);
      assert.equal(response?.status(), 200, `${path} answers 200`);
      await page.getByTestId(marker).first().waitFor();
      await page.reload();
      await page.getByTestId(marker).first().waitFor();
      assert.equal(new URL(page.url()).pathname + new URL(page.url()).search, path);
    }
    assert.equal(await page.getByTestId('leaderboard-period').count(), 0);
    // The admin case page, with the token entered once for the tab.
    await page.goto('/admin');
    await page.getByTestId('admin-token-input').fill(adminToken);
    await page.getByTestId('admin-token-submit').click();
    await page.getByTestId('admin-signed-in').waitFor();
    await page.goto(`/admin/cases/${caseId}`);
    await page.locator(`[data-testid="case-detail"][data-case-id="${caseId}"]`).waitFor();
    await page.reload();
    await page.locator(`[data-testid="case-detail"][data-case-id="${caseId}"]`).waitFor();
    assert.deepEqual(problemsOf(page), []);
  });
});
