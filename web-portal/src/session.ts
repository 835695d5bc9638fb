// Wallet sign-in: EIP-1193 provider (`window.ethereum`), the coordinator's nonce message signed
// with `personal_sign` (EIP-191), and the resulting session kept in sessionStorage per address.

import { apiJson } from './api';
import type { IssuedNonce, VerifyResponse } from './types';

export interface Eip1193Provider {
  request(args: { method: string; params?: unknown[] }): Promise<unknown>;
}

declare global {
  interface Window {
    ethereum?: Eip1193Provider;
  }
}

export interface Session {
  token: string;
  address: string;
  expires_ms: number;
}

const key = (address: string) => `infermine.session.${address.toLowerCase()}`;

export function loadSession(address: string): Session | null {
  try {
    const raw = sessionStorage.getItem(key(address));
    if (!raw) return null;
    const session = JSON.parse(raw) as Session;
    if (typeof session.token !== 'string' || session.expires_ms <= Date.now() + 10_000) {
      sessionStorage.removeItem(key(address));
      return null;
    }
    return session;
  } catch {
    return null;
  }
}

export function saveSession(session: Session): void {
  sessionStorage.setItem(key(session.address), JSON.stringify(session));
}

export function clearSession(address: string): void {
  sessionStorage.removeItem(key(address));
}

export function walletProvider(): Eip1193Provider | undefined {
  return typeof window !== 'undefined' ? window.ethereum : undefined;
}

/** An EIP-1193 error (e.g. 4001: the user declined) made readable. */
export function providerErrorMessage(error: unknown): string {
  const e = error as { code?: unknown; message?: unknown } | null;
  if (e && e.code === 4001) return 'You declined the request in your wallet.';
  if (e && e.code === -32002) return 'Your wallet already has a request waiting: open it and answer that first.';
  if (e && typeof e.message === 'string') return e.message;
  return String(error);
}

export type SignInStep = 'account' | 'nonce' | 'sign' | 'verify';

/**
 * Signs in as `expected` (the page's address): asks the wallet for its account, gets the
 * coordinator's message, has the wallet sign it, and trades the signature for a session.
 * Throws when the wallet's account is another address.
 */
export async function signIn(
  provider: Eip1193Provider,
  expected: string,
  onStep: (step: SignInStep) => void,
): Promise<Session> {
  onStep('account');
  const accounts = (await provider.request({ method: 'eth_requestAccounts' })) as unknown;
  const list = Array.isArray(accounts) ? accounts.filter((a): a is string => typeof a === 'string') : [];
  if (list.length === 0) throw new Error('Your wallet shared no account.');
  const account = list.find((a) => a.toLowerCase() === expected.toLowerCase());
  if (!account) {
    throw new WrongAccountError(list[0]!);
  }
  onStep('nonce');
  const issued = await apiJson<IssuedNonce>('/api/v1/auth/nonce', { method: 'POST', body: { address: account } });
  onStep('sign');
  const signature = await provider.request({ method: 'personal_sign', params: [issued.message, account] });
  if (typeof signature !== 'string') throw new Error('Your wallet returned no signature.');
  onStep('verify');
  const verified = await apiJson<VerifyResponse>('/api/v1/auth/verify', {
    method: 'POST',
    body: { address: account, signature, nonce: issued.nonce },
  });
  const session = { token: verified.token, address: verified.address.toLowerCase(), expires_ms: verified.expires_ms };
  saveSession(session);
  return session;
}

export class WrongAccountError extends Error {
  readonly account: string;
  constructor(account: string) {
    super(`Your wallet's account is ${account}, not this page's address.`);
    this.name = 'WrongAccountError';
    this.account = account;
  }
}
