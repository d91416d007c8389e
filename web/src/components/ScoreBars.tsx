import type { ScoredLabel } from "../api/types";
import { formatPercent } from "../lib/format";

/** Labels with their scores as horizontal bars, best first. */
export function ScoreBars({ scores, caption }: { scores: readonly ScoredLabel[]; caption: string }) {
  if (scores.length === 0) return <p className="muted">No label scored above the threshold.</p>;
  return (
    <ol className="score-bars" aria-label={caption}>
      {scores.map((s, i) => (
        <li key={`${i}:${s.label}`} className="score-row">
          <span className="score-label">{s.label}</span>
          <span className="score-track" aria-hidden="true">
            <span className="score-fill" style={{ width: `${Math.max(0, Math.min(1, s.score)) * 100}%` }} />
          </span>
          <span className="score-value">{formatPercent(s.score)}</span>
        </li>
      ))}
    </ol>
  );
}
