import { useEffect, useId, useRef, useState, type ChangeEvent, type DragEvent } from "react";
import { classifyImage } from "../api/classify";
import { getModels } from "../api/models";
import { useApi } from "../auth/context";
import { ErrorNote } from "../components/ErrorNote";
import { ResultCard } from "../components/ResultCard";
import { CONCURRENCY, newJobs, updateJob, type ClassifyJob } from "../lib/classifyJobs";
import { runQueue } from "../lib/queue";
import { usePageTitle } from "../lib/usePageTitle";
import { useQuery } from "../lib/useQuery";

export function ClassifyPage() {
  usePageTitle("Classify");
  const api = useApi();
  const ids = { files: useId(), camera: useId(), store: useId(), model: useId(), topK: useId() };
  const models = useQuery("models", (signal) => getModels(api, signal));
  const [chosenModel, setChosenModel] = useState<string | null>(null);
  const [store, setStore] = useState(false);
  const [topK, setTopK] = useState(5);
  const [jobs, setJobs] = useState<ClassifyJob[]>([]);
  const [dragging, setDragging] = useState(false);
  const stop = useRef(new AbortController());
  useEffect(() => {
    const controller = new AbortController();
    stop.current = controller;
    return () => controller.abort();
  }, []);

  const activeTag = models.data?.active ?? "";
  const modelValue = chosenModel ?? activeTag;

  const start = (files: File[]) => {
    if (files.length === 0) return;
    const model = chosenModel ?? undefined; // not chosen: whatever is active when it runs
    const added = newJobs(files, { model, store });
    setJobs((all) => [...added, ...all]);
    const signal = stop.current.signal;
    void runQueue(
      added,
      (job) =>
        classifyImage(api, job.file, job.file.name || "image", { model: job.model, store: job.store, topK, signal }),
      {
        concurrency: CONCURRENCY,
        signal,
        onStart: (i) => setJobs((all) => updateJob(all, added[i]?.id, { status: "running" })),
        onSettled: (i, outcome) => {
          if (signal.aborted) return;
          const change: Partial<ClassifyJob> = outcome.ok
            ? { status: "done", result: outcome.value }
            : { status: "failed", error: outcome.error };
          setJobs((all) => updateJob(all, added[i]?.id, change));
        },
      },
    );
  };

  const onPick = (event: ChangeEvent<HTMLInputElement>) => {
    start(Array.from(event.target.files ?? []));
    event.target.value = ""; // picking the same files again starts again
  };
  const onDrop = (event: DragEvent<HTMLDivElement>) => {
    event.preventDefault();
    setDragging(false);
    start(Array.from(event.dataTransfer.files));
  };

  const running = jobs.filter((j) => j.status === "queued" || j.status === "running").length;
  return (
    <section>
      <h1>Classify</h1>
      <form className="card classify-options" onSubmit={(e) => e.preventDefault()} aria-label="Classify options">
        <div className="field">
          <label htmlFor={ids.model}>Model</label>
          <select
            id={ids.model}
            value={modelValue}
            onChange={(e) => setChosenModel(e.target.value || null)}
            disabled={!models.data}
            data-testid="classify-model"
          >
            {!models.data && <option value="">{models.error ? "Active model" : "Loading…"}</option>}
            {models.data?.models.map((m) => {
              const tag = `${m.name}:${m.version}`;
              const notes = [tag === activeTag ? "active" : null, m.state !== "ready" ? m.state : null].filter(Boolean);
              return (
                <option key={tag} value={tag}>
                  {tag}
                  {notes.length ? ` (${notes.join(", ")})` : ""}
                </option>
              );
            })}
          </select>
        </div>
        <div className="field">
          <label htmlFor={ids.topK}>Labels per image</label>
          <input
            id={ids.topK}
            type="number"
            min={1}
            max={100}
            value={topK}
            onChange={(e) => setTopK(Math.min(100, Math.max(1, Number(e.target.value) || 1)))}
            data-testid="classify-top-k"
          />
        </div>
        <div className="field-inline switch">
          <input
            id={ids.store}
            type="checkbox"
            role="switch"
            checked={store}
            onChange={(e) => setStore(e.target.checked)}
            data-testid="classify-store"
          />
          <label htmlFor={ids.store}>Store images (needed for feedback)</label>
        </div>
      </form>
      {models.error !== undefined && <ErrorNote error={models.error} />}

      <div
        className={`drop-zone${dragging ? " dragging" : ""}`}
        onDragOver={(e) => {
          e.preventDefault();
          setDragging(true);
        }}
        onDragLeave={() => setDragging(false)}
        onDrop={onDrop}
        data-testid="classify-drop"
      >
        <p>Drop images here, or</p>
        <div className="pickers">
          <input
            id={ids.files}
            className="visually-hidden-input"
            type="file"
            accept="image/*"
            multiple
            onChange={onPick}
            data-testid="classify-files"
          />
          <label htmlFor={ids.files} className="button primary">
            Choose images
          </label>
          <input
            id={ids.camera}
            className="visually-hidden-input"
            type="file"
            accept="image/*"
            capture="environment"
            onChange={onPick}
            data-testid="classify-camera"
          />
          <label htmlFor={ids.camera} className="button">
            Use camera
          </label>
        </div>
        <p className="muted small">Each image is sent on its own, {CONCURRENCY} at a time.</p>
      </div>

      {jobs.length > 0 && (
        <div className="results-head">
          <h2>Results</h2>
          <p role="status" className="muted" data-testid="classify-progress">
            {running ? `${running} of ${jobs.length} still running` : `${jobs.length} classified`}
          </p>
          <button type="button" onClick={() => setJobs([])} disabled={running > 0} data-testid="classify-clear">
            Clear results
          </button>
        </div>
      )}
      <div className="results">
        {jobs.map((job) => (
          <ResultCard key={job.id} job={job} onRemove={(id) => setJobs((all) => all.filter((j) => j.id !== id))} />
        ))}
      </div>
    </section>
  );
}
