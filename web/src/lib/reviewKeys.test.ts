import { describe, expect, it } from "vitest";
import type { ReviewItem } from "../api/types";
import {
  choicesFor,
  initialReview,
  isReviewKey,
  leftOnPage,
  reviewReducer,
  wantedCursor,
  type ReviewAction,
  type ReviewState,
} from "./reviewKeys";

function item(id: string, top: string, others: string[] = []): ReviewItem {
  return {
    id,
    created_at: "2026-01-01T00:00:00Z",
    value: 0.4,
    prediction: {
      model: { name: "digits", version: "v1" },
      label: top,
      score: 0.4,
      predictions: [top, ...others].map((label, i) => ({ label, score: 0.4 - i * 0.1 })),
      created_at: "2026-01-01T00:00:00Z",
    },
  };
}

const LABELS = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

function loaded(items: ReviewItem[], nextCursor: string | null = null): ReviewState {
  return reviewReducer(initialReview, {
    type: "loaded",
    items,
    cursor: null,
    nextCursor,
    total: 40,
    model: "digits",
  });
}

const key = (k: string): ReviewAction => ({ type: "key", key: k, labels: LABELS });

describe("choicesFor", () => {
  it("offers the predictions best first, then the model's other labels, once each", () => {
    expect(choicesFor(item("a", "7", ["1", "9"]), LABELS)).toEqual(["7", "1", "9", "0", "2", "3", "4", "5", "6", "8"]);
    expect(choicesFor(undefined, LABELS)).toEqual([]);
  });
});

describe("reviewReducer", () => {
  it("Enter confirms the top prediction of the current item", () => {
    const s = reviewReducer(loaded([item("a", "7"), item("b", "3")]), key("Enter"));
    expect(s.pending).toEqual({ id: "a", label: "7" });
  });

  it("a number key picks the n-th choice", () => {
    const start = loaded([item("a", "7", ["1"])]);
    expect(reviewReducer(start, key("2")).pending).toEqual({ id: "a", label: "1" });
    expect(reviewReducer(start, key("3")).pending).toEqual({ id: "a", label: "0" });
  });

  it("a number past the choices does nothing", () => {
    const start = loaded([item("a", "7")]);
    expect(reviewReducer(start, { type: "key", key: "5", labels: [] })).toBe(start);
  });

  it("ignores other keys, and keys while a label is being saved", () => {
    const start = loaded([item("a", "7"), item("b", "3")]);
    expect(reviewReducer(start, key("x"))).toBe(start);
    const saving = reviewReducer(start, key("Enter"));
    expect(reviewReducer(saving, key("2"))).toBe(saving);
    expect(reviewReducer(saving, key("ArrowRight"))).toBe(saving);
  });

  it("arrows move to the previous and next item, within the page", () => {
    let s = loaded([item("a", "7"), item("b", "3")]);
    expect(reviewReducer(s, key("ArrowLeft")).index).toBe(0);
    s = reviewReducer(s, key("ArrowRight"));
    expect(s.index).toBe(1);
    expect(reviewReducer(s, key("ArrowRight"))).toBe(s); // last page: nowhere to go
    expect(reviewReducer(s, key("ArrowLeft")).index).toBe(0);
  });

  it("moving past the last item asks for the next page", () => {
    let s = loaded([item("a", "7")], "cursor-2");
    s = reviewReducer(s, key("ArrowRight"));
    expect(s.wantNext).toBe(true);
    expect(wantedCursor(s)).toBe("cursor-2");
    s = reviewReducer(s, {
      type: "loaded",
      items: [item("c", "1")],
      cursor: "cursor-2",
      nextCursor: null,
      total: 39,
      model: "digits",
    });
    expect(s.wantNext).toBe(false);
    expect(wantedCursor(s)).toBe("cursor-2");
    expect(s.items.map((i) => i.id)).toEqual(["c"]);
  });

  it("a saved label counts, leaves the item and moves on to the next unlabelled one", () => {
    let s = loaded([item("a", "7"), item("b", "3"), item("c", "1")]);
    s = reviewReducer(s, key("Enter"));
    s = reviewReducer(s, { type: "saved" });
    expect(s.labelledCount).toBe(1);
    expect(s.index).toBe(1);
    expect(s.pending).toBeNull();
    expect(s.total).toBe(39);
    expect(leftOnPage(s)).toBe(2);
    // back to the labelled one: it cannot be labelled twice
    s = reviewReducer(s, key("ArrowLeft"));
    expect(reviewReducer(s, key("Enter"))).toBe(s);
  });

  it("the last save on a page asks for the next one", () => {
    let s = loaded([item("a", "7")], "next");
    s = reviewReducer(reviewReducer(s, key("1")), { type: "saved" });
    expect(s.wantNext).toBe(true);
  });

  it("a failed save keeps the item and says why", () => {
    let s = loaded([item("a", "7"), item("b", "3")]);
    s = reviewReducer(reviewReducer(s, key("Enter")), { type: "failed", message: "Rate limited." });
    expect(s.index).toBe(0);
    expect(s.pending).toBeNull();
    expect(s.error).toBe("Rate limited.");
    expect(s.labelledCount).toBe(0);
  });

  it("a click picks like a key", () => {
    const s = reviewReducer(loaded([item("a", "7")]), { type: "pick", label: "4" });
    expect(s.pending).toEqual({ id: "a", label: "4" });
  });

  it("reset starts from the first page again and keeps the session count", () => {
    let s = loaded([item("a", "7")], "n");
    s = reviewReducer(reviewReducer(s, key("Enter")), { type: "saved" });
    const r = reviewReducer(s, { type: "reset" });
    expect(r.items).toEqual([]);
    expect(r.labelledCount).toBe(1);
    expect(r.round).toBe(s.round + 1);
    expect(wantedCursor(r)).toBeNull();
  });

  it("knows its keys", () => {
    expect(["1", "9", "Enter", "ArrowLeft", "ArrowRight"].every(isReviewKey)).toBe(true);
    expect(["0", "a", "Tab", " ", "ArrowUp"].some(isReviewKey)).toBe(false);
  });
});
