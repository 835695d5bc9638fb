import { useEffect, useRef, type ReactNode } from 'react';
import { ApiError } from '../api';
import { formatPoints } from '../shared.js';
import type { Amount } from '../types';

/** A polite live status while something loads. */
export function Loading({ what }: { what: string }) {
  return (
    <p className="status" role="status" aria-live="polite" data-testid="loading">
      <span className="spinner" aria-hidden="true" /> Loading {what}…
    </p>
  );
}

/** An error as the API worded it, announced at once. */
export function ErrorMessage({
  error,
  title,
  onRetry,
}: {
  error: Error;
  title?: string;
  onRetry?: () => void;
}) {
  const code = error instanceof ApiError ? error.code : undefined;
  const status = error instanceof ApiError ? error.status : undefined;
  // Asking again helps after a network failure, a rate limit or a server error, not after a
  // request the API refused.
  const retryable = status === undefined || status === 0 || status === 429 || status >= 500;
  return (
    <div className="notice notice-error" role="alert" data-testid="error" data-code={code} data-status={status}>
      <p className="notice-title">{title ?? 'Something went wrong'}</p>
      <p data-testid="error-message">{error.message}</p>
      {onRetry && retryable && (
        <button type="button" className="button-secondary" onClick={onRetry}>
          Try again
        </button>
      )}
    </div>
  );
}

/** Nothing to show, said plainly. */
export function Empty({ children, testId }: { children: ReactNode; testId?: string }) {
  return (
    <p className="empty" data-testid={testId ?? 'empty'}>
      {children}
    </p>
  );
}

/** A points amount: formatted for people, exact micro-points in `data-micro` for programs. */
export function Points({ amount, testId }: { amount: Amount; testId?: string }) {
  const negative = amount.micro < 0;
  return (
    <span
      className={`points${negative ? ' points-negative' : ''}`}
      data-testid={testId}
      data-micro={amount.micro}
      title={`${amount.micro.toLocaleString('en-US')} micro-points`}
    >
      {formatPoints(amount.points)}
    </span>
  );
}

/**
 * The page's main heading. After an in-app navigation it takes focus, so screen-reader and
 * keyboard users start at the new page rather than on the link they followed.
 */
export function PageHeading({ children }: { children: ReactNode }) {
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    if (window.history.state && (window.history.state as { idx?: number }).idx) {
      ref.current?.focus({ preventScroll: true });
    }
  }, []);
  return (
    <h1 ref={ref} tabIndex={-1} className="page-heading">
      {children}
    </h1>
  );
}
