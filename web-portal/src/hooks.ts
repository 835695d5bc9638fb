import { useCallback, useEffect, useRef, useState } from 'react';

export type Loadable<T> =
  | { state: 'loading'; data?: undefined; error?: undefined }
  | { state: 'ok'; data: T; error?: undefined }
  | { state: 'error'; data?: undefined; error: Error };

/**
 * Runs `load` whenever `key` changes (a null key loads nothing), aborting the previous run.
 * `reload` runs it again with the same key. A result is only ever shown for the key it was
 * loaded for: between a key change and the new load's start the state is `loading`, never
 * the previous key's data under the new key's heading.
 */
export function useLoad<T>(
  key: string | null,
  load: (signal: AbortSignal) => Promise<T>,
): Loadable<T> & { reload: () => void } {
  const [result, setResult] = useState<{ key: string | null; value: Loadable<T> }>({
    key,
    value: { state: 'loading' },
  });
  const [generation, setGeneration] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    if (key === null) return;
    const controller = new AbortController();
    setResult({ key, value: { state: 'loading' } });
    loadRef.current(controller.signal).then(
      (data) => {
        if (!controller.signal.aborted) setResult({ key, value: { state: 'ok', data } });
      },
      (error: unknown) => {
        if (controller.signal.aborted) return;
        const value: Loadable<T> = {
          state: 'error',
          error: error instanceof Error ? error : new Error(String(error)),
        };
        setResult({ key, value });
      },
    );
    return () => controller.abort();
  }, [key, generation]);

  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  const value: Loadable<T> = result.key === key ? result.value : { state: 'loading' };
  return { ...value, reload };
}

/** Sets the document title while a page is shown. */
export function useTitle(title: string): void {
  useEffect(() => {
    document.title = title ? `${title} · infermine` : 'infermine';
  }, [title]);
}
