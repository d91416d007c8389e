import { useState } from "react";
import { getModels, getVersions } from "../api/models";
import type { ServedModel } from "../api/types";
import { useApi, useAuth } from "../auth/context";
import { ErrorNote, Loading } from "../components/ErrorNote";
import { EvaluationsPanel } from "../components/models/EvaluationsPanel";
import { RolloutPanel } from "../components/models/RolloutPanel";
import { VersionsPanel } from "../components/models/VersionsPanel";
import { formatDateTime, formatMetric } from "../lib/format";
import { groupByName } from "../lib/models";
import { usePageTitle } from "../lib/usePageTitle";
import { useQuery } from "../lib/useQuery";

export function ModelsPage() {
  usePageTitle("Models");
  const api = useApi();
  const [refresh, setRefresh] = useState(0);
  const models = useQuery(`models:${refresh}`, (signal) => getModels(api, signal));
  const data = models.data ?? models.previous;
  const onChanged = () => setRefresh((n) => n + 1);

  return (
    <section>
      <h1>Models</h1>
      {models.error !== undefined && <ErrorNote error={models.error} />}
      {!data && models.loading && <Loading what="models" />}
      {data && (
        <>
          <p className="muted" data-testid="models-summary">
            Active: {data.active ?? "none"} · {data.ready ? "all ready" : "not all ready"}
          </p>
          {Object.entries(data.unavailable).map(([tag, why]) => (
            <p key={tag} className="error-note" role="note">
              {tag}: {why}
            </p>
          ))}
          {[...groupByName(data.models)].map(([name, served]) => (
            <ModelSection key={name} name={name} served={served} refresh={refresh} onChanged={onChanged} />
          ))}
        </>
      )}
    </section>
  );
}

function ModelSection({
  name,
  served,
  refresh,
  onChanged,
}: {
  name: string;
  served: ServedModel[];
  refresh: number;
  onChanged: () => void;
}) {
  const api = useApi();
  const { can } = useAuth();
  const versions = useQuery(`versions:${name}:${refresh}`, (signal) => getVersions(api, name, signal));
  const list = versions.data ?? versions.previous;
  return (
    <section className="card model" aria-labelledby={`model-${name}`} data-testid="model-section" data-model={name}>
      <h2 id={`model-${name}`}>{name}</h2>
      <ul className="served plain">
        {served.map((m) => (
          <li key={m.version} data-testid="served-model" data-version={m.version}>
            <code>{m.version}</code> {m.active && <span className="badge good">active</span>}{" "}
            <span className={`badge ${m.state === "ready" ? "" : m.state === "failed" ? "bad" : "warn"}`}>{m.state}</span>{" "}
            <span className="muted small">
              {m.architecture} · {m.labels_count} labels · input {m.input_size}px · created {formatDateTime(m.created_at)}
              {Object.entries(m.metrics)
                .slice(0, 3)
                .map(([k, v]) => ` · ${k} ${formatMetric(k, v)}`)
                .join("")}
            </span>
            {m.error && <p className="error-text">{m.error}</p>}
          </li>
        ))}
      </ul>
      {versions.error !== undefined && <ErrorNote error={versions.error} />}
      {!list && versions.loading && <Loading what="versions" />}
      {list && <VersionsPanel name={name} versions={list} onChanged={onChanged} />}
      {can("admin") && list && <RolloutPanel name={name} versions={list.versions} refresh={refresh} onChanged={onChanged} />}
      {can("admin") && <EvaluationsPanel name={name} refresh={refresh} />}
    </section>
  );
}
