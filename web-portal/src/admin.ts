// The admin token: pasted by the admin, kept for the browser tab only (sessionStorage).

const KEY = 'infermine.admin-token';

export function loadAdminToken(): string | null {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function saveAdminToken(token: string): void {
  sessionStorage.setItem(KEY, token);
}

export function clearAdminToken(): void {
  sessionStorage.removeItem(KEY);
}
