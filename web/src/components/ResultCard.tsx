import { useEffect, useRef, useState } from "react";
import { explainImage } from "../api/classify";
import { messageOf } from "../api/errors";
import type { ExplainResult } from "../api/types";
import { useApi, useAuth } from "../auth/context";
import { answeredTag, type ClassifyJob } from "../lib/classifyJobs";
import { formatBytes, formatMs, formatPercent } from "../lib/format";
import { useObjectUrl } from "../lib/useObjectUrl";
import { ErrorNote } from "./ErrorNote";
import { ExplainCaption, PreviewWithHeatmap } from "./ExplainView";
import { FeedbackForm } from "./FeedbackForm";
import { ScoreBars } from "./ScoreBars";

type Explain =
  | { kind: "off" }
  | { kind: "loading" }
  | { kind: "shown"; result: ExplainResult }
  | { kind: "hidden"; result: ExplainResult }
  | { kind: "failed"; message: string };

export function ResultCard({ job, onRemove }: { job: ClassifyJob; onRemove: (id: number) => void }) {
  const api = useApi();
  const { can } = useAuth();
  const preview = useObjectUrl(job.file);
  const [explain, setExplain] = useState<Explain>({ kind: "off" });
  const abort = useRef<AbortController | null>(null);
  useEffect(() => () => abort.current?.abort(), []);

  const result = job.result;
  const top = result?.predictions[0];
  const name = job.file.name || "image";

  const toggleExplain = async () => {
    if (!result) return;
    if (explain.kind === "shown") return setExplain({ kind: "hidden", result: explain.result });
    if (explain.kind === "hidden") return setExplain({ kind: "shown", result: explain.result });
    if (explain.kind === "loading") return;
    abort.current = new AbortController();
    setExplain({ kind: "loading" });
    try {
      const found = await explainImage(api, job.file, name, {
        model: answeredTag(result),
        signal: abort.current.signal,
      });
      setExplain({ kind: "shown", result: found });
    } catch (error) {
      if (!abort.current.signal.aborted) setExplain({ kind: "failed", message: messageOf(error) });
    }
  };

  const heading = `${name}`;
  return (
    <article
      className={`card result-card status-${job.status}`}
      data-testid="result-card"
      data-filename={name}
      data-status={job.status}
      aria-busy={job.status === "queued" || job.status === "running"}
    >
      <header className="result-head">
        <h3 className="file-name">{heading}</h3>
        <button type="button" className="link" onClick={() => onRemove(job.id)} aria-label={`Remove ${name}`}>
          Remove
        </button>
      </header>
      <div className="result-body">
        <PreviewWithHeatmap
          src={preview}
          alt={`Preview of ${name}`}
          explanation={explain.kind === "shown" ? explain.result : null}
        />
        <div className="result-facts">
          {job.status === "queued" && <p className="muted">Waiting…</p>}
          {job.status === "running" && <p className="muted">Classifying…</p>}
          {job.status === "failed" && <ErrorNote error={job.error} testId="result-error" />}
          {result && (
            <>
              <p className="top-label">
                <span className="top-label-text" data-testid="result-top-label">
                  {top ? top.label : "No label"}
                </span>
                {top && <span className="muted"> {formatPercent(top.score)}</span>}
              </p>
              <ScoreBars scores={result.predictions} caption={`Top labels for ${name}`} />
              {Object.keys(result.attributes).length > 0 && (
                <dl className="attributes" aria-label="Attributes">
                  {Object.entries(result.attributes).map(([head, value]) => (
                    <div key={head}>
                      <dt>{head}</dt>
                      <dd>
                        {value.label} <span className="muted">{formatPercent(value.score)}</span>
                      </dd>
                    </div>
                  ))}
                </dl>
              )}
              <p className="muted small" data-testid="result-meta">
                {result.model.name}:{result.model.version} · {formatMs(result.timing_ms.total)}
                {result.cached ? " · cached" : ` · batch of ${result.batch_size}`} · {result.image.width}×
                {result.image.height} {result.image.format} · {formatBytes(result.image.bytes)}
                {result.image.id ? " · stored" : ""}
              </p>
              <div className="actions">
                <button
                  type="button"
                  aria-pressed={explain.kind === "shown"}
                  onClick={() => void toggleExplain()}
                  disabled={explain.kind === "loading"}
                  data-testid="explain-toggle"
                >
                  {explain.kind === "loading" ? "Explaining…" : explain.kind === "shown" ? "Hide explanation" : "Explain"}
                </button>
              </div>
              {explain.kind === "shown" && <ExplainCaption explanation={explain.result} />}
              {explain.kind === "failed" && (
                <p className="error-text" role="alert" data-testid="explain-error">
                  {explain.message}
                </p>
              )}
              {can("label") && (
                <FeedbackForm
                  imageId={result.image.id}
                  topLabel={top?.label}
                  model={answeredTag(result)}
                  predictedLabels={result.predictions.map((p) => p.label)}
                />
              )}
            </>
          )}
        </div>
      </div>
    </article>
  );
}
