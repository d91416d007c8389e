import { useState } from "react";
import { activateVersion } from "../../api/models";
import { messageOf } from "../../api/errors";
import type { VersionList } from "../../api/types";
import { useApi, useAuth } from "../../auth/context";
import { formatDateTime, formatMetric } from "../../lib/format";
import { headlineMetrics, versionOf } from "../../lib/models";
import { ConfirmDialog } from "../ConfirmDialog";
import { VersionDetails } from "./VersionDetails";

type Pending = { kind: "activate" | "rollback"; version: string };
type Notice = { text: string; previous: string | null; error?: boolean };

/** A model's registered versions: details, and (admin) activation with a one-click roll back. */
export function VersionsPanel({
  name,
  versions,
  onChanged,
}: {
  name: string;
  versions: VersionList;
  onChanged: () => void;
}) {
  const api = useApi();
  const { can } = useAuth();
  const [selected, setSelected] = useState<string | null>(null);
  const [pending, setPending] = useState<Pending | null>(null);
  const [busy, setBusy] = useState(false);
  const [notice, setNotice] = useState<Notice | null>(null);
  const metrics = headlineMetrics(versions.versions.map((v) => v.metrics));

  const activate = async ({ kind, version }: Pending) => {
    setBusy(true);
    try {
      const answer = await activateVersion(api, name, version);
      const previous = answer.previous === null ? null : versionOf(answer.previous);
      setNotice({
        text:
          kind === "rollback"
            ? `Rolled back: ${name} serves ${answer.model.version} again.`
            : `${name} now serves ${answer.model.version}${previous ? ` (was ${previous})` : ""}.`,
        previous: previous !== answer.model.version ? previous : null,
      });
      onChanged();
    } catch (error) {
      setNotice({ text: messageOf(error), previous: null, error: true });
    } finally {
      setBusy(false);
      setPending(null);
    }
  };

  return (
    <div className="versions">
      <h3>Versions</h3>
      {notice && (
        <div className={`notice${notice.error ? " error-note" : ""}`} role={notice.error ? "alert" : "status"} data-testid="model-notice">
          <p>{notice.text}</p>
          {notice.previous && can("admin") && (
            <button
              type="button"
              onClick={() => setPending({ kind: "rollback", version: notice.previous ?? "" })}
              data-testid="rollback-button"
            >
              Roll back to {notice.previous}
            </button>
          )}
        </div>
      )}
      <div className="table-scroll">
        <table className="data" data-testid="versions-table">
          <caption className="visually-hidden">Registered versions of {name}, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Version</th>
              <th scope="col">Created</th>
              <th scope="col">Architecture</th>
              {metrics.map((m) => (
                <th key={m} scope="col" className="num">
                  {m}
                </th>
              ))}
              <th scope="col">State</th>
              <th scope="col">
                <span className="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {versions.versions.map((v) => (
              <tr key={v.version} data-testid="version-row" data-version={v.version} className={v.active ? "active-row" : undefined}>
                <th scope="row">
                  <code>{v.version}</code>
                </th>
                <td className="nowrap">{formatDateTime(v.created_at)}</td>
                <td>
                  {v.architecture === null
                    ? "in the repository only"
                    : `${v.architecture} · ${v.labels_count ?? "–"} labels`}
                </td>
                {metrics.map((m) => (
                  <td key={m} className="num">
                    {formatMetric(m, v.metrics[m])}
                  </td>
                ))}
                <td>
                  {v.active && <span className="badge good">active</span>} {v.served && <span className="badge">served</span>}
                </td>
                <td className="nowrap">
                  <button
                    type="button"
                    className="link"
                    aria-expanded={selected === v.version}
                    onClick={() => setSelected(selected === v.version ? null : v.version)}
                    data-testid="version-details-toggle"
                  >
                    {selected === v.version ? "Hide details" : "Details"}
                  </button>{" "}
                  {can("admin") && !v.active && (
                    <button
                      type="button"
                      onClick={() => setPending({ kind: "activate", version: v.version })}
                      aria-label={`Activate ${v.version}`}
                      data-testid="activate-button"
                    >
                      Activate
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {selected && <VersionDetails key={selected} name={name} version={selected} />}
      {pending && (
        <ConfirmDialog
          title={pending.kind === "rollback" ? `Roll back ${name} to ${pending.version}?` : `Activate ${name} ${pending.version}?`}
          confirmLabel={pending.kind === "rollback" ? "Roll back" : "Activate"}
          busy={busy}
          onConfirm={() => void activate(pending)}
          onCancel={() => setPending(null)}
        >
          <p>
            Requests for {name} get version {pending.version} from now on; the version it replaces
            is retired once its requests finish.
          </p>
        </ConfirmDialog>
      )}
    </div>
  );
}
