import { describe, expect, it } from "vitest";
import { flatten } from "./flatten";
import { apiFilters, filtersFromSearch, searchFromFilters } from "./imageFilters";
import { headlineMetrics, reliabilitySeries, shareFromPercent, versionOf } from "./models";

describe("models helpers", () => {
  it("takes the version out of a tag (activate answers previous as name:version)", () => {
    expect(versionOf("digits:v1")).toBe("v1");
    expect(versionOf("v1")).toBe("v1");
  });

  it("reads a canary share as a percentage", () => {
    expect(shareFromPercent("10")).toBe(0.1);
    expect(shareFromPercent("2.5")).toBe(0.025);
    expect(shareFromPercent("0")).toBeNull();
    expect(shareFromPercent("100")).toBeNull();
    expect(shareFromPercent("x")).toBeNull();
  });

  it("puts accuracy-like metrics first", () => {
    expect(headlineMetrics([{ loss: 0.1, top1: 0.9 }, { top5: 1, epochs: 3 }])).toEqual(["top1", "top5", "loss"]);
  });

  it("reliability bins as percentages, empty bins as gaps", () => {
    expect(
      reliabilitySeries([
        { lower: 0.9, upper: 1, count: 10, confidence: 0.95, accuracy: 0.9 },
        { lower: 0, upper: 0.1, count: 0, confidence: null, accuracy: null },
      ]),
    ).toEqual([
      { bin: "0–10%", accuracy: null, confidence: null, ideal: 5, count: 0 },
      { bin: "90–100%", accuracy: 90, confidence: 95, ideal: 95, count: 10 },
    ]);
  });
});

describe("flatten", () => {
  it("turns nested values into path/value rows", () => {
    expect(flatten({ a: 1, b: { c: "x", d: [1, 2] }, e: [{ f: true }], g: null })).toEqual([
      { path: "a", value: "1", numeric: true },
      { path: "b.c", value: "x", numeric: false },
      { path: "b.d", value: "1, 2", numeric: false },
      { path: "e[0].f", value: "true", numeric: false },
      { path: "g", value: "null", numeric: false },
    ]);
  });
});

describe("image filters", () => {
  it("round-trip through the URL and make the API's query", () => {
    const values = filtersFromSearch(new URLSearchParams("label=cat&to=2024-03-10&source=user&offset=24"));
    expect(values.label).toBe("cat");
    expect(searchFromFilters(values, 48).toString()).toBe("label=cat&source=user&to=2024-03-10&offset=48");
    expect(apiFilters(values)).toEqual({
      label: "cat",
      predicted_label: undefined,
      source: "user",
      attribute: undefined,
      model: undefined,
      created_after: undefined,
      created_before: "2024-03-11",
    });
  });
});
