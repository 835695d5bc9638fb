// The wallet page against the API: balances, chart, ledger, GPUs, boost, slashes, the empty
// and malformed states, and the phone layout.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HISTORY_DAYS, LEDGER_PAGE_SIZE, SLASHES_LIMIT, formatMultiplier, formatPoints } from '../src/shared.js';
import { api, micro, need, newPage, portalEnv, problemsOf, screenshot, suiteBrowser } from './helpers.mjs';

const env = portalEnv();

describe('wallet page', () => {
  const browser = suiteBrowser();
  const wallet = need('PORTAL_WALLET').toLowerCase();


  it('shows the all-time and season balances the API gives', async () => {
    const view = await api(`/api/v1/wallets/${wallet}`);
    const page = await newPage(browser());
    await page.goto(`/wallet/${wallet}`);
    for (const kind of ['waifu', 'llama']) {
      const all = page.getByTestId(`balance-${kind}-all`);
      const season = page.getByTestId(`balance-${kind}-season`);
      await all.waitFor();
      assert.equal(await micro(all), view.balances[kind].micro, `${kind} all-time micro`);
      assert.equal(await all.textContent(), formatPoints(view.balances[kind].points), `${kind} all-time text`);
      assert.equal(await micro(season), view.season[kind].micro, `${kind} season micro`);
      assert.equal(await season.textContent(), formatPoints(view.season[kind].points), `${kind} season text`);
    }
    assert.equal(await page.getByTestId('season-name').textContent(), view.season.name);
    assert.ok(view.balances.waifu.micro !== 0 && view.balances.llama.micro !== 0, 'the seeded wallet has both kinds');
    assert.equal(await page.getByTestId('wallet-empty').count(), 0, 'a wallet with work is not shown as empty');
    await screenshot(page, 'wallet');
    assert.deepEqual(problemsOf(page), []);
  });

  it('lists the ledger as the API pages it, with reasons, and loads more', async () => {
    const first = await api(`/api/v1/wallets/${wallet}/ledger?limit=${LEDGER_PAGE_SIZE}`);
    assert.ok(first.entries.length > 0, 'the seeded wallet has ledger rows');
    assert.ok(first.entries.some((e) => e.entry === 'slash'), 'the seeded wallet has a slash');
    const page = await newPage(browser());
    await page.goto(`/wallet/${wallet}`);
    const rows = page.getByTestId('ledger-row');
    await rows.first().waitFor();
    assert.equal(await rows.count(), first.entries.length, 'rows on the first page');
    for (const [i, entry] of first.entries.entries()) {
      const row = rows.nth(i);
      assert.equal(await row.getAttribute('data-entry-id'), String(entry.id));
      assert.equal(await row.getAttribute('data-entry'), entry.entry);
      assert.equal(await row.getAttribute('data-kind'), entry.kind);
      const amount = row.getByTestId('ledger-amount');
      assert.equal(await micro(amount), entry.amount.micro, `entry ${entry.id} micro`);
      assert.equal(await amount.textContent(), formatPoints(entry.amount.points), `entry ${entry.id} text`);
      if (entry.entry === 'slash') {
        assert.equal(await row.getByTestId('ledger-reason').textContent(), entry.reason, `entry ${entry.id} reason`);
      } else {
        if (entry.model) assert.ok((await row.textContent()).includes(entry.model), `entry ${entry.id} model`);
        if (typeof entry.detail.multiplier === 'number') {
          assert.equal(await row.getByTestId('ledger-multiplier').textContent(), formatMultiplier(entry.detail.multiplier));
        }
        if (typeof entry.detail.latency_factor === 'number') {
          assert.ok(
            (await row.getByTestId('ledger-latency-factor').textContent()).startsWith(formatMultiplier(entry.detail.latency_factor)),
          );
        }
        const work = entry.detail.work ?? {};
        const workText = (await row.getByTestId('ledger-work').textContent()) ?? '';
        if (work.width) assert.ok(workText.includes(`${work.width}×${work.height}`), `entry ${entry.id} work`);
        if (work.prompt_tokens !== undefined) assert.ok(workText.includes(`${work.prompt_tokens} prompt`), `entry ${entry.id} work`);
      }
    }
    if (first.next_cursor) {
      const second = await api(`/api/v1/wallets/${wallet}/ledger?limit=${LEDGER_PAGE_SIZE}&cursor=${encodeURIComponent(first.next_cursor)}`);
      await page.getByTestId('ledger-load-more').click();
      await page.waitForFunction(
        (n) => document.querySelectorAll('[data-testid="ledger-row"]').length === n,
        first.entries.length + second.entries.length,
      );
      const last = second.entries[second.entries.length - 1];
      assert.equal(await rows.last().getAttribute('data-entry-id'), String(last.id));
    } else {
      await page.getByTestId('ledger-end').waitFor();
    }
    assert.deepEqual(problemsOf(page), []);
  });

  it('draws the points chart from the API history', async () => {
    const history = await api(`/api/v1/wallets/${wallet}/points-history?bucket=day&days=${HISTORY_DAYS}`);
    const page = await newPage(browser());
    await page.goto(`/wallet/${wallet}`);
    const canvas = page.getByTestId('points-chart-canvas');
    await canvas.waitFor();
    await page.waitForFunction(() => document.querySelector('[data-testid="points-chart-canvas"]')?.hasAttribute('data-chart'));
    const chart = JSON.parse((await canvas.getAttribute('data-chart')) ?? '{}');
    assert.equal(chart.labels.length, history.series.length, 'one bar per day');
    assert.deepEqual(chart.datasets[0].data, history.series.map((p) => p.waifu.points), 'waifu series');
    assert.deepEqual(chart.datasets[1].data, history.series.map((p) => p.llama.points), 'llama series');
    const rows = page.getByTestId('history-row');
    assert.equal(await rows.count(), history.series.length);
    for (const [i, point] of history.series.entries()) {
      const row = rows.nth(i);
      assert.equal(await row.getAttribute('data-start-ms'), String(point.start_ms));
      assert.equal(await row.getAttribute('data-waifu-micro'), String(point.waifu.micro));
      assert.equal(await row.getAttribute('data-llama-micro'), String(point.llama.micro));
    }
    // Something was drawn: the canvas has a size and non-transparent pixels.
    const drawn = await canvas.evaluate((el) => {
      const c = /** @type {HTMLCanvasElement} */ (el);
      const data = c.getContext('2d')?.getImageData(0, 0, c.width, c.height).data ?? [];
      let painted = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
      return { width: c.width, height: c.height, painted };
    });
    assert.ok(drawn.width > 0 && drawn.height > 0 && drawn.painted > 100, `canvas drawn: ${JSON.stringify(drawn)}`);
    assert.ok(
      history.series.some((p) => p.waifu.micro !== 0 || p.llama.micro !== 0),
      'the seeded history has points on some day',
    );
  });

  it('lists the GPUs with their state and last 24 h as the API gives them', async () => {
    const view = await api(`/api/v1/wallets/${wallet}`);
    assert.ok(view.miners.length > 0, 'the seeded wallet has GPUs');
    const page = await newPage(browser());
    await page.goto(`/wallet/${wallet}`);
    const rows = page.getByTestId('miner-row');
    await rows.first().waitFor();
    assert.equal(await rows.count(), view.miners.length);
    for (const [i, miner] of view.miners.entries()) {
      const row = rows.nth(i);
      assert.equal(await row.getAttribute('data-miner-id'), miner.miner_id);
      assert.equal(await row.getByTestId('miner-id').textContent(), miner.miner_id);
      assert.equal(await row.getAttribute('data-online'), String(miner.online));
      assert.equal(await row.getByTestId('miner-online').textContent(), miner.online ? 'Online' : 'Offline');
      assert.equal(await row.getByTestId('miner-boosted').count(), miner.boosted ? 1 : 0, `${miner.miner_id} boosted`);
      assert.equal(await row.getByTestId('miner-suspension').count(), miner.suspension ? 1 : 0, `${miner.miner_id} suspension`);
      if (miner.suspension) {
        assert.ok((await row.getByTestId('miner-suspension').textContent()).includes(miner.suspension.reason));
      }
      const detail = await api(`/api/v1/miners/${encodeURIComponent(miner.miner_id)}`);
      const jobs = row.getByTestId('miner-jobs-24h');
      await page.waitForFunction((el) => el && el.textContent !== '…', await jobs.elementHandle());
      assert.equal(await jobs.textContent(), String(detail.jobs_24h), `${miner.miner_id} jobs in 24 h`);
    }
  });

  it('shows the NFT boost in force and the slashes with their reasons', async () => {
    const view = await api(`/api/v1/wallets/${wallet}`);
    const slashes = await api(`/api/v1/slashes?address=${wallet}&limit=${SLASHES_LIMIT}`);
    const page = await newPage(browser());
    await page.goto(`/wallet/${wallet}`);
    await page.getByTestId('boost').waitFor();
    assert.ok(view.boost.nft_held > 0, 'the seeded wallet holds an NFT');
    assert.equal(await page.getByTestId('boost-nft-held').textContent(), String(view.boost.nft_held));
    assert.equal(await page.getByTestId('boost-nft-multiplier').textContent(), formatMultiplier(view.boost.nft_multiplier));
    assert.equal(await page.getByTestId('boost-gpus-covered').textContent(), String(view.boost.gpus_covered));
    const rows = page.getByTestId('slash-row');
    await rows.first().waitFor();
    assert.equal(await rows.count(), slashes.entries.length);
    for (const [i, entry] of slashes.entries.entries()) {
      assert.equal(await rows.nth(i).getByTestId('slash-reason').textContent(), entry.reason ?? '—');
      assert.equal(await micro(rows.nth(i).getByTestId('slash-amount')), entry.amount.micro);
    }
  });

  it('says so for a valid address with nothing mined', async () => {
    const empty = need('PORTAL_EMPTY_WALLET').toLowerCase();
    const view = await api(`/api/v1/wallets/${empty}`);
    const page = await newPage(browser());
    await page.goto(`/wallet/${empty}`);
    await page.getByTestId('wallet-empty').waitFor();
    assert.match(await page.getByTestId('wallet-empty').textContent(), /Nothing mined yet/);
    assert.equal(await micro(page.getByTestId('balance-waifu-all')), view.balances.waifu.micro);
    assert.equal(await page.getByTestId('balance-waifu-all').textContent(), '0');
    assert.equal(await page.getByTestId('error').count(), 0);
    await screenshot(page, 'wallet-empty');
    assert.deepEqual(problemsOf(page), []);
  });

  it("shows the API's error for a malformed address", async () => {
    const bad = 'not-a-wallet';
    const response = await fetch(`${env.url}/api/v1/wallets/${bad}`);
    assert.equal(response.status, 400);
    const { error } = await response.json();
    const page = await newPage(browser());
    await page.goto(`/wallet/${bad}`);
    const message = page.getByTestId('error-message');
    await message.waitFor();
    assert.equal(await message.textContent(), error.message);
    assert.equal(await page.getByTestId('error').getAttribute('role'), 'alert');
    assert.equal(await page.getByTestId('balance-waifu-all').count(), 0);
    await screenshot(page, 'wallet-malformed');
    assert.deepEqual(problemsOf(page), []);
  });

  it('fits a 375 px wide screen without horizontal scrolling', async () => {
    const page = await newPage(browser(), { width: 375, height: 812 });
    await page.goto(`/wallet/${wallet}`);
    await page.getByTestId('ledger-row').first().waitFor();
    await page.getByTestId('miner-row').first().waitFor();
    await page.getByTestId('slash-row').first().waitFor();
    await page.getByTestId('points-chart-canvas').waitFor();
    // Open the chart's table too: everything on the page must fit.
    await page.locator('.chart-data summary').click();
    const widths = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      client: document.documentElement.clientWidth,
    }));
    assert.ok(widths.scroll <= 375, `page is ${widths.scroll} px wide at 375 px`);
    await screenshot(page, 'wallet-375');
  });
});
