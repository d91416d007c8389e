// The Classify page's files: one job per file, sent one request each, a few at a time.
import type { ClassifyResult } from "../api/types";

export type JobStatus = "queued" | "running" | "done" | "failed";

export interface ClassifyJob {
  id: number;
  file: File;
  status: JobStatus;
  /** The model asked for (a tag), or undefined for the active one. */
  model: string | undefined;
  store: boolean;
  result?: ClassifyResult;
  error?: unknown;
}

export const CONCURRENCY = 3;

let lastId = 0;

export function newJobs(files: readonly File[], options: { model: string | undefined; store: boolean }): ClassifyJob[] {
  return files.map((file) => ({ id: ++lastId, file, status: "queued", ...options }));
}

export function updateJob(jobs: readonly ClassifyJob[], id: number | undefined, change: Partial<ClassifyJob>): ClassifyJob[] {
  return jobs.map((j) => (j.id === id ? { ...j, ...change } : j));
}

/** The tag of the model that answered (name:version), for explain and feedback. */
export function answeredTag(result: ClassifyResult): string {
  return `${result.model.name}:${result.model.version}`;
}
