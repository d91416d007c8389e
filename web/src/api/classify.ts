import type { ApiClient } from "./client";
import type { Categories, ClassifyResult, ExplainResult } from "./types";

export interface ClassifyOptions {
  /** A served model tag (name or name:version); the active one when absent. */
  model?: string;
  topK?: number;
  store: boolean;
  signal?: AbortSignal;
}

export function classifyImage(
  api: ApiClient,
  file: Blob,
  filename: string,
  options: ClassifyOptions,
): Promise<ClassifyResult> {
  const form = new FormData();
  form.append("image", file, filename);
  if (options.topK !== undefined) form.append("top_k", String(options.topK));
  if (options.model) form.append("model", options.model);
  form.append("store", options.store ? "true" : "false");
  return api.json<ClassifyResult>("/v1/classify", { form, signal: options.signal });
}

export interface ExplainOptions {
  model?: string;
  head?: string;
  label?: string;
  signal?: AbortSignal;
}

export function explainImage(
  api: ApiClient,
  file: Blob,
  filename: string,
  options: ExplainOptions = {},
): Promise<ExplainResult> {
  const form = new FormData();
  form.append("image", file, filename);
  if (options.model) form.append("model", options.model);
  if (options.head) form.append("head", options.head);
  if (options.label) form.append("label", options.label);
  return api.json<ExplainResult>("/v1/explain", { form, signal: options.signal });
}

export function getCategories(
  api: ApiClient,
  model: string | undefined,
  signal?: AbortSignal,
): Promise<Categories> {
  return api.json<Categories>("/v1/categories", { query: { model }, signal });
}
