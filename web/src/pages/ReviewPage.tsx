import { useEffect, useEffectEvent, useId, useReducer, useRef, useState } from "react";
import { addLabel, getReviewPage } from "../api/catalog";
import { messageOf } from "../api/errors";
import type { ReviewStrategy } from "../api/types";
import { useApi } from "../auth/context";
import { AuthImage } from "../components/AuthImage";
import { ErrorNote } from "../components/ErrorNote";
import { ScoreBars } from "../components/ScoreBars";
import { formatDateTime, formatPercent, shortId } from "../lib/format";
import {
  choicesFor,
  currentItem,
  initialReview,
  isReviewKey,
  leftOnPage,
  reviewReducer,
  wantedCursor,
} from "../lib/reviewKeys";
import { useCategories } from "../lib/useCategories";
import { usePageTitle } from "../lib/usePageTitle";

const PAGE_SIZE = 20;
const STRATEGIES: { value: ReviewStrategy; label: string }[] = [
  { value: "least_confident", label: "Least confident first" },
  { value: "margin", label: "Smallest margin first" },
  { value: "disagreement", label: "Champion and challenger disagree" },
];

function typing(target: EventTarget | null): boolean {
  return (
    target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName))
  );
}

export function ReviewPage() {
  usePageTitle("Review");
  const api = useApi();
  const strategyId = useId();
  const otherId = useId();
  const [strategy, setStrategy] = useState<ReviewStrategy>("least_confident");
  const [state, dispatch] = useReducer(reviewReducer, initialReview);
  const [loaded, setLoaded] = useState<{ key: string; error?: unknown } | null>(null);
  const [other, setOther] = useState("");
  const categories = useCategories(state.model);
  const labels = categories.data?.labels ?? [];

  // The page wanted: the first, the one loaded, or the next once the reviewer got past the end.
  const cursor = wantedCursor(state);
  const pageKey = `${strategy}|${cursor ?? ""}|${state.round}`;
  useEffect(() => {
    const controller = new AbortController();
    getReviewPage(api, { strategy, cursor, limit: PAGE_SIZE }, controller.signal).then(
      (page) => {
        if (controller.signal.aborted) return;
        dispatch({
          type: "loaded",
          items: page.items,
          cursor,
          nextCursor: page.next_cursor,
          total: page.total,
          model: page.model,
        });
        setLoaded({ key: pageKey });
      },
      (error: unknown) => {
        if (!controller.signal.aborted) setLoaded({ key: pageKey, error });
      },
    );
    return () => controller.abort();
  }, [api, strategy, cursor, pageKey]);
  const loading = loaded?.key !== pageKey;

  // A label picked (by key or click) is posted once; the reducer is told how it went.
  const posted = useRef<object | null>(null);
  useEffect(() => {
    const pending = state.pending;
    if (pending === null || posted.current === pending) return;
    posted.current = pending;
    addLabel(api, pending.id, { label: pending.label }).then(
      () => dispatch({ type: "saved" }),
      (error: unknown) => dispatch({ type: "failed", message: messageOf(error) }),
    );
  }, [api, state.pending]);

  const onKey = useEffectEvent((event: KeyboardEvent) => {
    if (event.altKey || event.ctrlKey || event.metaKey || !isReviewKey(event.key)) return;
    if (typing(event.target) || document.querySelector("[role=dialog]")) return;
    // Enter on a focused button is that button's click, not "confirm the top label".
    if (event.key === "Enter" && event.target instanceof HTMLElement && event.target.closest("button, a")) return;
    event.preventDefault();
    dispatch({ type: "key", key: event.key, labels });
  });
  useEffect(() => {
    const listener = (event: KeyboardEvent) => onKey(event);
    window.addEventListener("keydown", listener);
    return () => window.removeEventListener("keydown", listener);
  }, []);

  const item = currentItem(state);
  const choices = choicesFor(item, labels);
  const numbered = choices.slice(0, 9);
  const rest = choices.slice(9);
  const left = leftOnPage(state);
  const isDone = item !== undefined && state.done.includes(item.id);
  const finished = !loading && left === 0 && state.nextCursor === null;

  return (
    <section className="review">
      <h1>Review</h1>
      <div className="toolbar">
        <div className="field">
          <label htmlFor={strategyId}>Order</label>
          <select
            id={strategyId}
            value={strategy}
            onChange={(e) => {
              setStrategy(e.target.value as ReviewStrategy);
              dispatch({ type: "reset" });
            }}
            data-testid="review-strategy"
          >
            {STRATEGIES.map((s) => (
              <option key={s.value} value={s.value}>
                {s.label}
              </option>
            ))}
          </select>
        </div>
        <p className="muted small">
          Keys: <kbd>1</kbd>–<kbd>9</kbd> pick a label, <kbd>Enter</kbd> confirms the top prediction,{" "}
          <kbd>←</kbd> <kbd>→</kbd> previous and next.
        </p>
      </div>
      <p role="status" className="progress" data-testid="review-progress">
        {state.labelledCount} labelled this session · {left} left on this page
        {state.nextCursor !== null ? (loading ? " · next page loading…" : " · more pages") : ""} ·{" "}
        {state.total} in the queue
      </p>
      {loaded?.error !== undefined && loaded.key === pageKey && <ErrorNote error={loaded.error} />}
      {state.error && (
        <p className="error-note" role="alert" data-testid="review-error">
          {state.error}
        </p>
      )}
      {loading && state.items.length === 0 && (
        <p className="muted" role="status">
          Loading the queue…
        </p>
      )}
      {finished && (
        <div className="card" data-testid="review-empty">
          <p>Nothing more to review{state.items.length ? " on the pages loaded" : ""}.</p>
          <button type="button" onClick={() => dispatch({ type: "reset" })}>
            Start again from the top
          </button>
        </div>
      )}
      {item && !finished && (
        <article className="card review-item" data-testid="review-item" data-id={item.id} aria-busy={loading}>
          <header className="result-head">
            <h2>
              Image {state.index + 1} of {state.items.length}: <code>{shortId(item.id)}</code>
            </h2>
            <span className="muted small">stored {formatDateTime(item.created_at)}</span>
          </header>
          <div className="result-body">
            <div className="preview">
              <AuthImage key={item.id} id={item.id} alt={`Stored image ${shortId(item.id)}`} className="preview-image" />
            </div>
            <div className="result-facts">
              <p className="top-label">
                <span data-testid="review-top-label">{item.prediction.label}</span>{" "}
                <span className="muted">{formatPercent(item.prediction.score)}</span>
              </p>
              <p className="muted small">
                {item.prediction.model.name}:{item.prediction.model.version}
              </p>
              <ScoreBars scores={item.prediction.predictions} caption="Predictions" />
              {item.challenger && (
                <p className="small">
                  Challenger {item.challenger.model.version} says “{item.challenger.label}” (
                  {formatPercent(item.challenger.score)})
                </p>
              )}
              {isDone ? (
                <p className="ok-text" data-testid="review-done">
                  Labelled.
                </p>
              ) : (
                <>
                  <ol className="choices" aria-label="Labels">
                    {numbered.map((label, i) => (
                      <li key={label}>
                        <button
                          type="button"
                          onClick={() => dispatch({ type: "pick", label })}
                          disabled={state.pending !== null}
                          aria-keyshortcuts={String(i + 1)}
                          data-testid="review-choice"
                        >
                          <kbd>{i + 1}</kbd> {label}
                        </button>
                      </li>
                    ))}
                  </ol>
                  {rest.length > 0 && (
                    <form
                      className="field-inline"
                      onSubmit={(e) => {
                        e.preventDefault();
                        if (other) dispatch({ type: "pick", label: other });
                      }}
                    >
                      <label htmlFor={otherId}>Another label</label>
                      <select id={otherId} value={other} onChange={(e) => setOther(e.target.value)}>
                        <option value="">Choose…</option>
                        {rest.map((l) => (
                          <option key={l} value={l}>
                            {l}
                          </option>
                        ))}
                      </select>
                      <button type="submit" disabled={!other || state.pending !== null}>
                        Save
                      </button>
                    </form>
                  )}
                </>
              )}
              {state.pending && (
                <p className="muted" role="status">
                  Saving “{state.pending.label}”…
                </p>
              )}
              <div className="actions">
                <button type="button" onClick={() => dispatch({ type: "move", delta: -1 })} disabled={state.index === 0}>
                  ← Previous
                </button>
                <button
                  type="button"
                  onClick={() => dispatch({ type: "move", delta: 1 })}
                  disabled={state.index >= state.items.length - 1 && state.nextCursor === null}
                >
                  Next →
                </button>
              </div>
            </div>
          </div>
        </article>
      )}
    </section>
  );
}
