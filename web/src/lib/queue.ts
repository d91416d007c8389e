// Runs one job per item with at most `concurrency` at a time. A job that fails is recorded
// as that item's failure and the queue goes on with the others.

export type Outcome<R> = { ok: true; value: R } | { ok: false; error: unknown };

export interface QueueOptions<R> {
  concurrency: number;
  /** Called as each job starts. */
  onStart?: (index: number) => void;
  /** Called as each job settles, in the order they settle. */
  onSettled?: (index: number, outcome: Outcome<R>) => void;
  signal?: AbortSignal;
}

export async function runQueue<T, R>(
  items: readonly T[],
  job: (item: T, index: number) => Promise<R>,
  options: QueueOptions<R>,
): Promise<Outcome<R>[]> {
  const outcomes: Outcome<R>[] = new Array<Outcome<R>>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length && !options.signal?.aborted) {
      const index = next++;
      options.onStart?.(index);
      let outcome: Outcome<R>;
      try {
        outcome = { ok: true, value: await job(items[index] as T, index) };
      } catch (error) {
        outcome = { ok: false, error };
      }
      outcomes[index] = outcome;
      options.onSettled?.(index, outcome);
    }
  };
  const width = Math.max(1, Math.min(options.concurrency, items.length));
  await Promise.all(Array.from({ length: width }, worker));
  return outcomes;
}
