// The look-up page: a wallet address typed in and submitted (by keyboard) opens its page.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { need, newPage, problemsOf, screenshot, suiteBrowser } from './helpers.mjs';

describe('look-up', () => {
  const browser = suiteBrowser();
  const wallet = need('PORTAL_WALLET').toLowerCase();


  it('navigates to /wallet/{address} from the form, by keyboard alone', async () => {
    const page = await newPage(browser());
    await page.goto('/');
    await screenshot(page, 'home');
    // Tab from the top of the page until the address field has focus.
    let focused = false;
    for (let i = 0; i < 20 && !focused; i++) {
      await page.keyboard.press('Tab');
      focused = await page.evaluate(() => document.activeElement?.getAttribute('data-testid') === 'lookup-input');
    }
    assert.ok(focused, 'the address field is reachable with Tab');
    const label = await page.evaluate(() => {
      const input = document.activeElement;
      return input?.id ? document.querySelector(`label[for="${input.id}"]`)?.textContent : null;
    });
    assert.equal(label, 'Wallet address', 'the field is labelled');
    await page.keyboard.type(wallet.toUpperCase().replace('0X', '0x'));
    await page.keyboard.press('Enter');
    await page.waitForURL(`**/wallet/${wallet}`);
    await page.getByTestId('balance-waifu-all').waitFor();
    assert.equal(new URL(page.url()).pathname, `/wallet/${wallet}`);
    assert.deepEqual(problemsOf(page), []);
  });

  it('refuses what is not an address, saying why', async () => {
    const page = await newPage(browser());
    await page.goto('/');
    await page.getByTestId('lookup-input').fill('0x1234');
    await page.getByTestId('lookup-submit').click();
    await page.getByTestId('lookup-error').waitFor();
    assert.equal(new URL(page.url()).pathname, '/');
    assert.equal(await page.getByTestId('lookup-input').getAttribute('aria-invalid'), 'true');
  });
});
