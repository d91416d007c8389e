import { useId, useState, type FormEvent } from "react";
import { endRollout, getRollouts, startRollout } from "../../api/models";
import { messageOf } from "../../api/errors";
import type { Rollout, RolloutStats, VersionSummary } from "../../api/types";
import { useApi } from "../../auth/context";
import { formatCount, formatDateTime, formatMs, formatPercent } from "../../lib/format";
import { shareFromPercent } from "../../lib/models";
import { useQuery } from "../../lib/useQuery";
import { ConfirmDialog } from "../ConfirmDialog";
import { ErrorNote, Loading } from "../ErrorNote";

type Action =
  | { kind: "start"; version: string; share: number }
  | { kind: "promote" | "rollback"; rollout: Rollout };

const STAT_ROWS: { key: keyof RolloutStats; label: string; show: (v: number | null) => string }[] = [
  { key: "requests", label: "Requests", show: formatCount },
  { key: "errors", label: "Errors", show: formatCount },
  { key: "error_rate", label: "Error rate", show: (v) => formatPercent(v, 2) },
  { key: "mean_confidence", label: "Mean confidence", show: (v) => formatPercent(v) },
  { key: "p95_latency_ms", label: "p95 latency", show: formatMs },
  { key: "labelled", label: "Labelled", show: formatCount },
  { key: "agreement", label: "Agreement with labels", show: (v) => formatPercent(v) },
];

/** The canary of a model (admin): the running one with live stats, or a form to start one. */
export function RolloutPanel({
  name,
  versions,
  refresh,
  onChanged,
}: {
  name: string;
  versions: readonly VersionSummary[];
  refresh: number;
  onChanged: () => void;
}) {
  const api = useApi();
  const ids = { version: useId(), share: useId() };
  const rollouts = useQuery(`rollouts:${name}:${refresh}`, (signal) => getRollouts(api, name, signal));
  const [action, setAction] = useState<Action | null>(null);
  const [busy, setBusy] = useState(false);
  const [message, setMessage] = useState<{ text: string; error: boolean } | null>(null);
  const [formError, setFormError] = useState<string | null>(null);
  const candidates = versions.filter((v) => !v.active);

  const run = async (a: Action) => {
    setBusy(true);
    try {
      if (a.kind === "start") {
        const r = await startRollout(api, { model: name, version: a.version, share: a.share });
        setMessage({ text: `Canary started: ${r.challenger_version} gets ${formatPercent(r.share, 0)} of requests.`, error: false });
      } else {
        const r = await endRollout(api, a.rollout.id, a.kind);
        setMessage({
          text: a.kind === "promote" ? `Promoted ${r.challenger_version}: it is the champion now.` : `Canary rolled back: ${r.champion_version} serves every request.`,
          error: false,
        });
      }
      onChanged();
    } catch (error) {
      setMessage({ text: messageOf(error), error: true });
    } finally {
      setBusy(false);
      setAction(null);
    }
  };

  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const version = String(form.get("version") ?? "");
    const share = shareFromPercent(String(form.get("share") ?? ""));
    if (!version) return setFormError("Pick the challenger version.");
    if (share === null) return setFormError("The share is a percentage above 0 and below 100.");
    setFormError(null);
    setAction({ kind: "start", version, share });
  };

  const current = rollouts.data ?? rollouts.previous; // kept on screen while it refreshes
  const running = current?.running ?? null;
  const history = (current?.items ?? []).filter((r) => r.id !== running?.id);
  return (
    <div className="rollouts">
      <h3>Canary</h3>
      {message && (
        <p className={message.error ? "error-note" : "ok-text"} role={message.error ? "alert" : "status"} data-testid="canary-notice">
          {message.text}
        </p>
      )}
      {rollouts.error !== undefined && <ErrorNote error={rollouts.error} />}
      {rollouts.loading && !current && <Loading what="rollouts" />}
      {running && (
        <div className="card" data-testid="rollout-running" data-id={running.id}>
          <p>
            <span className="badge info">running</span> challenger <code>{running.challenger_version}</code> gets{" "}
            <strong>{formatPercent(running.share, 0)}</strong> of requests; champion <code>{running.champion_version}</code> the rest.
          </p>
          <p className="muted small">
            Started {formatDateTime(running.started_at)}
            {running.started_by ? ` by ${running.started_by}` : ""}
          </p>
          {running.last_stats ? (
            <div className="table-scroll">
              <table className="data" data-testid="rollout-stats">
                <thead>
                  <tr>
                    <th scope="col">Live</th>
                    <th scope="col" className="num">Champion</th>
                    <th scope="col" className="num">Challenger</th>
                  </tr>
                </thead>
                <tbody>
                  {STAT_ROWS.map((row) => (
                    <tr key={row.key}>
                      <th scope="row">{row.label}</th>
                      <td className="num">{row.show(running.last_stats?.champion?.[row.key] ?? null)}</td>
                      <td className="num">{row.show(running.last_stats?.challenger?.[row.key] ?? null)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : (
            <p className="muted">No live statistics yet.</p>
          )}
          {running.last_stats?.verdict && (
            <p className="small" data-testid="rollout-verdict">
              Last verdict: <strong>{running.last_stats.verdict}</strong>
              {running.last_stats.reasons?.length ? ` (${running.last_stats.reasons.join("; ")})` : ""}
            </p>
          )}
          <div className="actions">
            <button type="button" className="primary" onClick={() => setAction({ kind: "promote", rollout: running })} data-testid="canary-promote">
              Promote {running.challenger_version}
            </button>
            <button type="button" className="danger" onClick={() => setAction({ kind: "rollback", rollout: running })} data-testid="canary-rollback">
              Roll back canary
            </button>
          </div>
        </div>
      )}
      {current && !running && (
        <form className="card stack-inline" onSubmit={submit} aria-label="Start a canary" data-testid="canary-form">
          <div className="field">
            <label htmlFor={ids.version}>Challenger version</label>
            <select id={ids.version} name="version" defaultValue="" data-testid="canary-version">
              <option value="">Choose…</option>
              {candidates.map((v) => (
                <option key={v.version} value={v.version}>
                  {v.version}
                </option>
              ))}
            </select>
          </div>
          <div className="field">
            <label htmlFor={ids.share}>Share of requests (%)</label>
            <input id={ids.share} name="share" type="number" min={1} max={99} step={1} defaultValue={10} data-testid="canary-share" />
          </div>
          <button type="submit" data-testid="canary-start" disabled={candidates.length === 0}>
            Start canary
          </button>
          {formError && (
            <p className="error-text" role="alert">
              {formError}
            </p>
          )}
        </form>
      )}
      {history.length > 0 && (
        <details>
          <summary>Earlier rollouts ({history.length})</summary>
          <div className="table-scroll">
            <table className="data" data-testid="rollout-history">
              <thead>
                <tr>
                  <th scope="col">Challenger</th>
                  <th scope="col">Champion</th>
                  <th scope="col" className="num">Share</th>
                  <th scope="col">State</th>
                  <th scope="col">Ended</th>
                  <th scope="col">Reason</th>
                </tr>
              </thead>
              <tbody>
                {history.map((r) => (
                  <tr key={r.id}>
                    <td>{r.challenger_version}</td>
                    <td>{r.champion_version}</td>
                    <td className="num">{formatPercent(r.share, 0)}</td>
                    <td>{r.state.replace("_", " ")}</td>
                    <td className="nowrap">
                      {formatDateTime(r.ended_at)}
                      {r.ended_by ? ` by ${r.ended_by}` : ""}
                    </td>
                    <td>{r.reason ?? "–"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </details>
      )}
      {action && (
        <ConfirmDialog
          title={
            action.kind === "start"
              ? `Start a canary of ${action.version}?`
              : action.kind === "promote"
                ? `Promote ${action.rollout.challenger_version}?`
                : "Roll back the canary?"
          }
          confirmLabel={action.kind === "start" ? "Start" : action.kind === "promote" ? "Promote" : "Roll back"}
          danger={action.kind === "rollback"}
          busy={busy}
          onConfirm={() => void run(action)}
          onCancel={() => setAction(null)}
        >
          <p>
            {action.kind === "start"
              ? `${formatPercent(action.share, 0)} of ${name}'s requests go to ${action.version}; the active version answers the rest.`
              : action.kind === "promote"
                ? `${action.rollout.challenger_version} becomes the active version and answers every request.`
                : `${action.rollout.champion_version} answers every request again.`}
          </p>
        </ConfirmDialog>
      )}
    </div>
  );
}
