// Shared set-up of the portal's browser tests: the environment the seeding harness provides,
// Chromium through playwright-core (no browser download), API look-ups and screenshots.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';

const RUN_BY =
  'these browser tests are run by `cargo test -p infermine-tests --test portal`, which starts a ' +
  'seeded coordinator serving the built portal and sets PORTAL_URL and the other PORTAL_* variables';

// Without a seeded server there is nothing to test against: every test file fails at once,
// saying how the tests are meant to run (they never skip).
if (!process.env.PORTAL_URL) throw new Error(`PORTAL_URL is not set: ${RUN_BY}.`);

/**
 * The variables the harness sets. Without PORTAL_URL the tests fail (they never skip): there is
 * nothing to test against.
 */
export function portalEnv() {
  const url = process.env.PORTAL_URL;
  if (!url) throw new Error(`PORTAL_URL is not set: ${RUN_BY}.`);
  return {
    url: url.replace(/\/+$/, ''),
    wallet: process.env.PORTAL_WALLET?.toLowerCase(),
    emptyWallet: process.env.PORTAL_EMPTY_WALLET?.toLowerCase(),
    adminToken: process.env.PORTAL_ADMIN_TOKEN,
    caseId: process.env.PORTAL_CASE_ID,
    signerKey: process.env.PORTAL_SIGNER_KEY,
    screenshots: process.env.PORTAL_SCREENSHOTS,
  };
}

/** A variable the test needs besides PORTAL_URL. */
export function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: ${RUN_BY}.`);
  return value;
}

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Chromium at $CHROMIUM or /usr/bin/chromium. Playwright gives every launch a fresh, temporary
 * user-data directory (removed when the browser closes).
 */
export async function launch() {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  return chromium.launch({ executablePath, args: CHROMIUM_ARGS, headless: true });
}

/**
 * One browser for the enclosing `describe`: launched before its tests, closed after them.
 * Returns a getter, since the browser exists only once the suite starts.
 * @returns {() => import('playwright-core').Browser}
 */
export function suiteBrowser() {
  /** @type {import('playwright-core').Browser | undefined} */
  let browser;
  before(async () => {
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
  });
  return () => {
    if (!browser) throw new Error('the browser is not launched yet: call the getter inside a test');
    return browser;
  };
}

const problems = new WeakMap();

/**
 * A fresh page in its own context (no storage shared with other tests). Uncaught page errors
 * and console errors (other than the browser's own note on an HTTP error status) are collected;
 * `problemsOf(page)` lists them.
 */
export async function newPage(browser, { width = 1280, height = 900 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, baseURL: portalEnv().url });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  /** @type {string[]} */
  const seen = [];
  page.on('pageerror', (error) => seen.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      seen.push(`console error: ${message.text()}`);
    }
  });
  problems.set(page, seen);
  return page;
}

/** @param {import('playwright-core').Page} page */
export function problemsOf(page) {
  return problems.get(page) ?? [];
}

/**
 * GET (or another method) on the coordinator's API; resolves to the parsed JSON body.
 *
 * @param {string} path
 * @param {{ method?: string, body?: unknown, token?: string, expectStatus?: number }} [options]
 * @returns {Promise<any>}
 */
export async function api(path, { method = 'GET', body, token, expectStatus } = {}) {
  /** @type {Record<string, string>} */
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`${portalEnv().url}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (expectStatus !== undefined) {
    if (response.status !== expectStatus) {
      throw new Error(`${method} ${path}: expected ${expectStatus}, got ${response.status}: ${text}`);
    }
  } else if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status}: ${text}`);
  }
  return json;
}

/** Saves a full-page PNG into $PORTAL_SCREENSHOTS (when set). */
export async function screenshot(page, name) {
  const dir = portalEnv().screenshots;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`), fullPage: true });
}

/** The `data-micro` attribute of an element, as a number. */
export async function micro(locator) {
  return Number(await locator.getAttribute('data-micro'));
}
