import { describe, expect, it } from "vitest";
import { runQueue } from "./queue";

const tick = () => new Promise((r) => setTimeout(r, 1));

describe("runQueue", () => {
  it("a failing job does not stop the others", async () => {
    const settled: number[] = [];
    const outcomes = await runQueue(
      ["a.png", "notes.txt", "b.png"],
      async (name) => {
        await tick();
        if (name.endsWith(".txt")) throw new Error("unsupported_image_format");
        return name.toUpperCase();
      },
      { concurrency: 2, onSettled: (i) => settled.push(i) },
    );
    expect(outcomes).toEqual([
      { ok: true, value: "A.PNG" },
      { ok: false, error: new Error("unsupported_image_format") },
      { ok: true, value: "B.PNG" },
    ]);
    expect(settled.sort()).toEqual([0, 1, 2]);
  });

  it("never runs more than `concurrency` jobs at once", async () => {
    let running = 0;
    let most = 0;
    await runQueue(
      Array.from({ length: 10 }, (_, i) => i),
      async () => {
        running += 1;
        most = Math.max(most, running);
        await tick();
        running -= 1;
      },
      { concurrency: 3 },
    );
    expect(most).toBe(3);
  });

  it("starts every job, in order", async () => {
    const started: number[] = [];
    await runQueue([1, 2, 3, 4], async () => tick(), { concurrency: 2, onStart: (i) => started.push(i) });
    expect(started).toEqual([0, 1, 2, 3]);
  });

  it("starts nothing more once aborted", async () => {
    const controller = new AbortController();
    const started: number[] = [];
    await runQueue(
      [1, 2, 3, 4],
      async () => {
        controller.abort();
        await tick();
      },
      { concurrency: 1, signal: controller.signal, onStart: (i) => started.push(i) },
    );
    expect(started).toEqual([0]);
  });

  it("copes with no items", async () => {
    await expect(runQueue([], async () => 1, { concurrency: 3 })).resolves.toEqual([]);
  });
});
