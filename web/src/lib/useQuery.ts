import { useCallback, useEffect, useEffectEvent, useState } from "react";
import { isAbort } from "../api/errors";

export interface QueryResult<T> {
  /** The answer for the current key; undefined while it loads or when it failed. */
  data: T | undefined;
  /** The answer for an earlier key, kept while the current one loads (paging). */
  previous: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

interface Settled<T> {
  key: string;
  data?: T;
  error?: unknown;
}

/**
 * Loads `load()` whenever `key` changes (null: load nothing), aborting the request of a
 * key that was left; `reload()` loads the same key again.
 */
export function useQuery<T>(key: string | null, load: (signal: AbortSignal) => Promise<T>): QueryResult<T> {
  const [settled, setSettled] = useState<Settled<T> | null>(null);
  const [round, setRound] = useState(0);
  const fullKey = key === null ? null : `${round}|${key}`;
  const run = useEffectEvent((signal: AbortSignal) => load(signal));

  useEffect(() => {
    if (fullKey === null) return;
    const controller = new AbortController();
    run(controller.signal).then(
      (data) => {
        if (!controller.signal.aborted) setSettled({ key: fullKey, data });
      },
      (error: unknown) => {
        if (!controller.signal.aborted && !isAbort(error)) setSettled({ key: fullKey, error });
      },
    );
    return () => controller.abort();
  }, [fullKey]);

  const reload = useCallback(() => setRound((r) => r + 1), []);
  const current = settled !== null && settled.key === fullKey;
  return {
    data: current ? settled.data : undefined,
    previous: settled?.data,
    error: current ? settled.error : undefined,
    loading: fullKey !== null && !current,
    reload,
  };
}
