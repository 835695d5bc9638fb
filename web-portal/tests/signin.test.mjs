// Sign-in with an injected EIP-1193 wallet (window.ethereum backed by a real key), then
// minting a miner token (shown once, with the agent's configuration) and revoking it.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { privateKeyToAccount } from 'viem/accounts';
import { api, need, newPage, problemsOf, screenshot, suiteBrowser } from './helpers.mjs';

/**
 * Gives the page a `window.ethereum` whose account is `account`: `eth_requestAccounts` answers
 * its address and `personal_sign` signs with its key (EIP-191) in Node.
 *
 * @param {import('playwright-core').Page} page
 * @param {import('viem/accounts').PrivateKeyAccount} account
 */
async function injectWallet(page, account) {
  await page.exposeFunction('__infermineTestSign', async (/** @type {string} */ message) =>
    /^0x([0-9a-fA-F]{2})*$/.test(message)
      ? account.signMessage({ message: { raw: /** @type {`0x${string}`} */ (message) } })
      : account.signMessage({ message }),
  );
  await page.addInitScript((address) => {
    /** @type {any} */ (window).ethereum = {
      isInfermineTestWallet: true,
      async request({ method, params }) {
        switch (method) {
          case 'eth_requestAccounts':
          case 'eth_accounts':
            return [address];
          case 'eth_chainId':
            return '0x1';
          case 'personal_sign': {
            const [message, signer] = params;
            if (String(signer).toLowerCase() !== address.toLowerCase()) {
              throw Object.assign(new Error('unknown account'), { code: 4100 });
            }
            return /** @type {any} */ (window).__infermineTestSign(message);
          }
          default:
            throw Object.assign(new Error(`unsupported method ${method}`), { code: 4200 });
        }
      },
    };
  }, account.address);
}

describe('wallet sign-in and miner tokens', () => {
  const browser = suiteBrowser();


  it('signs in with the injected wallet, mints a token with instructions and revokes it', async () => {
    const account = privateKeyToAccount(/** @type {`0x${string}`} */ (need('PORTAL_SIGNER_KEY')));
    const address = account.address.toLowerCase();
    const page = await newPage(browser());
    await injectWallet(page, account);
    await page.goto(`/wallet/${address}`);
    await page.getByTestId('signin-button').click();
    await page.getByTestId('signed-in').waitFor();
    assert.ok((await page.getByTestId('signed-in').textContent()).includes(address));

    // The session survives a reload of the tab.
    await page.reload();
    await page.getByTestId('signed-in').waitFor();
    const session = await page.evaluate(
      (a) => JSON.parse(sessionStorage.getItem(`infermine.session.${a}`) ?? 'null'),
      address,
    );
    assert.ok(session?.token, 'a session is kept for the tab');
    const before = await api('/api/v1/miner-tokens', { token: session.token });

    const rig = `portal-${Date.now().toString(36)}`;
    await page.getByTestId('mint-name').fill(rig);
    await page.getByTestId('mint-button').click();
    const minted = page.getByTestId('minted-token');
    await minted.waitFor();
    const token = (await page.getByTestId('minted-token-value').textContent())?.trim() ?? '';
    assert.ok(token.length > 20, 'the token is shown');
    const config = (await page.getByTestId('agent-config').textContent()) ?? '';
    assert.ok(config.includes(token), 'the agent configuration holds the token');
    assert.match(config, /coordinator = "wss?:\/\//);
    const instructions = (await page.getByTestId('agent-instructions').textContent()) ?? '';
    assert.ok(instructions.includes('agent.toml') && instructions.includes('infermine-agent run --config agent.toml'));
    assert.match(await page.getByTestId('tokens-status').textContent(), /minted/);
    await screenshot(page, 'wallet-token-minted');

    const listed = await api('/api/v1/miner-tokens', { token: session.token });
    assert.equal(listed.length, before.length + 1);
    const created = listed.find((t) => t.name === rig);
    assert.ok(created && !created.revoked_ms, 'the API lists the new token as live');
    const row = page.locator(`[data-testid="token-row"][data-token-id="${created.id}"]`);
    await row.waitFor();
    assert.equal(await row.getAttribute('data-revoked'), 'false');
    assert.equal(await row.getByTestId('token-state').textContent(), 'Live');

    await row.getByTestId('token-revoke').click();
    await page.locator(`[data-testid="token-row"][data-token-id="${created.id}"][data-revoked="true"]`).waitFor();
    assert.equal(await row.getByTestId('token-revoke').count(), 0, 'a revoked token has no revoke button');
    assert.match(await row.getByTestId('token-state').textContent(), /^Revoked /);
    assert.equal(await minted.count(), 0, 'the revoked token is no longer offered for copying');
    const afterRevoke = await api('/api/v1/miner-tokens', { token: session.token });
    assert.ok(afterRevoke.find((t) => t.id === created.id)?.revoked_ms, 'the API has it revoked');
    assert.match(await page.getByTestId('tokens-status').textContent(), /revoked/);
    assert.deepEqual(problemsOf(page), []);
  });

  it('refuses to sign in as another address than the page shows', async () => {
    const account = privateKeyToAccount(/** @type {`0x${string}`} */ (need('PORTAL_SIGNER_KEY')));
    const other = need('PORTAL_EMPTY_WALLET').toLowerCase();
    const page = await newPage(browser());
    await injectWallet(page, account);
    await page.goto(`/wallet/${other}`);
    await page.getByTestId('signin-button').click();
    await page.getByTestId('signin-error').waitFor();
    assert.ok((await page.getByTestId('signin-error').textContent()).includes(account.address));
    assert.equal(await page.getByTestId('signed-in').count(), 0);
  });

  it('explains what to do when the browser has no wallet', async () => {
    const page = await newPage(browser());
    await page.goto(`/wallet/${need('PORTAL_EMPTY_WALLET').toLowerCase()}`);
    await page.getByTestId('no-wallet').waitFor();
    assert.equal(await page.getByTestId('signin-button').count(), 0);
  });
});
