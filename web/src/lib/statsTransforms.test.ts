import { describe, expect, it } from "vitest";
import { agreementSeries, describeCounts, histogramSeries, perDaySeries, topLabels } from "./statsTransforms";

describe("stats transforms", () => {
  it("per day: in order, the days between filled with zero", () => {
    expect(perDaySeries({ "2024-03-12": 4, "2024-03-10": 2 })).toEqual([
      { day: "2024-03-10", count: 2 },
      { day: "2024-03-11", count: 0 },
      { day: "2024-03-12", count: 4 },
    ]);
    expect(perDaySeries({})).toEqual([]);
    expect(perDaySeries(undefined)).toEqual([]);
  });

  it("labels: the most frequent first, the rest summed", () => {
    const rows = topLabels({ a: 1, b: 5, c: 5, d: 2 }, 2);
    expect(rows).toEqual([
      { label: "b", count: 5 },
      { label: "c", count: 5 },
      { label: "2 other labels", count: 3, other: true },
    ]);
    expect(topLabels({ a: 1 }, 2)).toEqual([{ label: "a", count: 1 }]);
  });

  it("confidence histogram: bins in order with names", () => {
    const rows = histogramSeries([
      { lower: 0.1, upper: 0.2, count: 3 },
      { lower: 0, upper: 0.1, count: 1 },
    ]);
    expect(rows.map((r) => [r.bin, r.count])).toEqual([
      ["0–10%", 1],
      ["10–20%", 3],
    ]);
    expect(histogramSeries(undefined)).toEqual([]);
  });

  it("agreement: percent per model version, none when nothing was labelled", () => {
    const rows = agreementSeries({
      "digits:v1": { labelled: 10, agreed: 9, agreement: 0.9 },
      "digits:v2": { labelled: 0, agreed: 0, agreement: null },
      "digits:v3": { labelled: 20, agreed: 15, agreement: null },
    });
    expect(rows.map((r) => [r.model, r.agreementPercent, r.agreementText])).toEqual([
      ["digits:v3", 75, "75.0%"],
      ["digits:v1", 90, "90.0%"],
      ["digits:v2", null, "–"],
    ]);
  });

  it("describes counts for a chart's accessible name", () => {
    expect(describeCounts("Per day", [])).toBe("Per day: no data.");
    expect(describeCounts("Per day", [{ name: "x", count: 2 }, { name: "y", count: 5 }])).toBe(
      "Per day: 2 entries, 7 in all; the largest is y with 5.",
    );
  });
});
