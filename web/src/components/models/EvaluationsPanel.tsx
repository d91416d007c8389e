import { getEvaluations } from "../../api/models";
import { useApi } from "../../auth/context";
import { formatDateTime } from "../../lib/format";
import { useQuery } from "../../lib/useQuery";
import { ErrorNote, Loading } from "../ErrorNote";
import { FlatTable } from "../FlatTable";

const OUTCOME_CLASS: Record<string, string> = {
  promoted: "good",
  canary: "info",
  rejected: "warn",
  failed: "bad",
};

/** Champion/challenger reports (admin): who won, on what scores, and why. */
export function EvaluationsPanel({ name, refresh }: { name: string; refresh: number }) {
  const api = useApi();
  const evaluations = useQuery(`evaluations:${name}:${refresh}`, (signal) => getEvaluations(api, name, signal));
  const current = evaluations.data ?? evaluations.previous;
  return (
    <div className="evaluations">
      <h3>Champion and challenger evaluations</h3>
      {evaluations.error !== undefined && <ErrorNote error={evaluations.error} />}
      {evaluations.loading && !current && <Loading what="evaluations" />}
      {current?.items.length === 0 && <p className="muted">No evaluation yet.</p>}
      <ul className="plain">
        {current?.items.map((e) => (
          <li key={e.id} className="card evaluation" data-testid="evaluation-item" data-outcome={e.outcome}>
            <p>
              <span className={`badge ${OUTCOME_CLASS[e.outcome] ?? ""}`}>{e.outcome}</span>{" "}
              {e.challenger_version ? (
                <>
                  challenger <code>{e.challenger_version}</code>
                </>
              ) : (
                "no challenger (training failed)"
              )}{" "}
              against {e.champion_version ? <code>{e.champion_version}</code> : "no champion"}
              {e.primary_metric ? ` on ${e.primary_metric}` : ""}
            </p>
            <p className="muted small">
              {formatDateTime(e.started_at)} → {formatDateTime(e.finished_at)}
              {e.actor ? ` · by ${e.actor}` : ""}
            </p>
            {e.reasons.length > 0 && (
              <ul className="reasons">
                {e.reasons.map((r, i) => (
                  <li key={i}>{r}</li>
                ))}
              </ul>
            )}
            {e.error && (
              <p className="error-text" role="note">
                {e.error}
              </p>
            )}
            <FlatTable value={e.scores} caption="Scores" testId="evaluation-scores" />
            <details>
              <summary>Full report</summary>
              <FlatTable value={e.report} caption="Report" />
            </details>
          </li>
        ))}
      </ul>
    </div>
  );
}
