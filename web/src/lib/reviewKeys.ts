// The review page's state, as a pure reducer: the loaded page, where the reviewer is, and
// what the keyboard asked for. Posting a label is the page's job: the reducer only records
// the intent (`pending`) and is told when it `saved` or `failed`.
import type { ReviewItem } from "../api/types";

export interface ReviewState {
  items: ReviewItem[];
  index: number;
  /** Ids labelled in this session (on this page). */
  done: string[];
  labelledCount: number;
  /** A label being posted: keys do nothing until it settles. */
  pending: { id: string; label: string } | null;
  error: string | null;
  nextCursor: string | null;
  total: number;
  /** The cursor this page was loaded with (null: the first page). */
  cursor: string | null;
  /** The page after this one is wanted (the reviewer moved past the last item). */
  wantNext: boolean;
  /** The model name the queue ranks on. */
  model: string | null;
  /** Bumped by each reset: the first page is loaded again. */
  round: number;
}

export type ReviewAction =
  | {
      type: "loaded";
      items: ReviewItem[];
      cursor: string | null;
      nextCursor: string | null;
      total: number;
      model: string;
    }
  | { type: "reset" }
  /** A key press; `labels` are the model's labels, offered after the item's predictions. */
  | { type: "key"; key: string; labels: readonly string[] }
  | { type: "pick"; label: string }
  | { type: "move"; delta: number }
  | { type: "saved" }
  | { type: "failed"; message: string };

export const initialReview: ReviewState = {
  items: [],
  index: 0,
  done: [],
  labelledCount: 0,
  pending: null,
  error: null,
  nextCursor: null,
  total: 0,
  cursor: null,
  wantNext: false,
  model: null,
  round: 0,
};

/** The labels offered for an item: its predictions best first, then the model's others. */
export function choicesFor(item: ReviewItem | undefined, labels: readonly string[]): string[] {
  if (!item) return [];
  const out: string[] = [];
  const add = (label: string) => {
    if (!out.includes(label)) out.push(label);
  };
  add(item.prediction.label);
  item.prediction.predictions.forEach((p) => add(p.label));
  if (item.challenger) add(item.challenger.label);
  labels.forEach(add);
  return out;
}

export function currentItem(state: ReviewState): ReviewItem | undefined {
  return state.items[state.index];
}

export function leftOnPage(state: ReviewState): number {
  return state.items.filter((i) => !state.done.includes(i.id)).length;
}

function pick(state: ReviewState, label: string | undefined): ReviewState {
  const item = currentItem(state);
  if (!item || label === undefined || state.pending || state.done.includes(item.id)) return state;
  return { ...state, pending: { id: item.id, label }, error: null };
}

function move(state: ReviewState, delta: number): ReviewState {
  if (state.pending) return state;
  const index = state.index + delta;
  if (index < 0) return state;
  if (index >= state.items.length) {
    return state.nextCursor !== null ? { ...state, wantNext: true, error: null } : state;
  }
  return { ...state, index, error: null };
}

/** After a save: the next item not labelled yet, past the current one; or the next page. */
function advance(state: ReviewState): ReviewState {
  const next = state.items.findIndex((item, i) => i > state.index && !state.done.includes(item.id));
  if (next >= 0) return { ...state, index: next };
  if (state.nextCursor !== null) return { ...state, wantNext: true };
  return state;
}

export function reviewReducer(state: ReviewState, action: ReviewAction): ReviewState {
  switch (action.type) {
    case "loaded":
      return {
        ...state,
        items: action.items,
        index: 0,
        done: [],
        pending: null,
        error: null,
        cursor: action.cursor,
        nextCursor: action.nextCursor,
        total: action.total,
        wantNext: false,
        model: action.model,
      };
    case "reset":
      // Start again from the first page (a new strategy, or the skipped ones): the session's
      // count stays.
      return { ...initialReview, labelledCount: state.labelledCount, round: state.round + 1 };
    case "pick":
      return pick(state, action.label);
    case "move":
      return move(state, action.delta);
    case "key": {
      if (/^[1-9]$/.test(action.key)) {
        const choices = choicesFor(currentItem(state), action.labels);
        return pick(state, choices[Number(action.key) - 1]);
      }
      switch (action.key) {
        case "Enter":
          return pick(state, currentItem(state)?.prediction.label);
        case "ArrowRight":
          return move(state, 1);
        case "ArrowLeft":
          return move(state, -1);
        default:
          return state;
      }
    }
    case "saved": {
      if (!state.pending) return state;
      const saved: ReviewState = {
        ...state,
        done: [...state.done, state.pending.id],
        labelledCount: state.labelledCount + 1,
        pending: null,
        total: Math.max(0, state.total - 1),
      };
      return advance(saved);
    }
    case "failed":
      return { ...state, pending: null, error: action.message };
  }
}

/** Keys the review page handles (so it can preventDefault them and leave the rest). */
export function isReviewKey(key: string): boolean {
  return /^[1-9]$/.test(key) || ["Enter", "ArrowRight", "ArrowLeft"].includes(key);
}

/** The cursor of the page wanted now: the next one once asked for, else the loaded one. */
export function wantedCursor(state: ReviewState): string | null {
  return state.wantNext ? state.nextCursor : state.cursor;
}
