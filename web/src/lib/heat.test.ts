import { describe, expect, it } from "vitest";
import { HEAT_LEVELS, heatClass, heatLevel, rowTotals } from "./heat";

describe("confusion matrix colours", () => {
  it("scales a count by its row's total into levels", () => {
    expect(heatLevel(0, 10)).toBe(0);
    expect(heatLevel(1, 1000)).toBe(1); // anything at all is visible
    expect(heatLevel(5, 10)).toBe(5);
    expect(heatLevel(10, 10)).toBe(HEAT_LEVELS);
    expect(heatLevel(3, 0)).toBe(0);
  });

  it("colours the diagonal as right answers and the rest as mistakes", () => {
    const m = [
      [8, 2],
      [0, 5],
    ];
    expect(rowTotals(m)).toEqual([10, 5]);
    expect(heatClass(m, 0, 0)).toBe("heat-ok-8");
    expect(heatClass(m, 0, 1)).toBe("heat-miss-2");
    expect(heatClass(m, 1, 0)).toBe("heat-miss-0");
    expect(heatClass(m, 1, 1)).toBe("heat-ok-10");
  });
});
