import type { ApiClient } from "./client";
import type {
  DeletedOut,
  ImageDetail,
  ImagePage,
  LabelIn,
  LabelOut,
  ReviewPage,
  ReviewStrategy,
  Stats,
} from "./types";

export interface ImageFilters {
  label?: string;
  predicted_label?: string;
  source?: string;
  attribute?: string;
  model?: string;
  created_after?: string;
  created_before?: string;
}

const imagePath = (id: string): string => `/v1/images/${encodeURIComponent(id)}`;

export function listImages(
  api: ApiClient,
  filters: ImageFilters & { limit: number; offset: number },
  signal?: AbortSignal,
): Promise<ImagePage> {
  return api.json<ImagePage>("/v1/images", { query: { ...filters }, signal });
}

export function getImage(api: ApiClient, id: string, signal?: AbortSignal): Promise<ImageDetail> {
  return api.json<ImageDetail>(imagePath(id), { signal });
}

export function getImageContent(api: ApiClient, id: string, signal?: AbortSignal): Promise<Blob> {
  return api.blob(`${imagePath(id)}/content`, { signal });
}

export function addLabel(api: ApiClient, id: string, body: LabelIn): Promise<LabelOut> {
  return api.json<LabelOut>(`${imagePath(id)}/labels`, { method: "POST", json: body });
}

export function deleteImage(api: ApiClient, id: string): Promise<DeletedOut> {
  return api.json<DeletedOut>(`/v1/admin/images/${encodeURIComponent(id)}`, { method: "DELETE" });
}

export interface ReviewQuery {
  strategy: ReviewStrategy;
  model?: string;
  limit?: number;
  cursor?: string | null;
}

export function getReviewPage(
  api: ApiClient,
  query: ReviewQuery,
  signal?: AbortSignal,
): Promise<ReviewPage> {
  return api.json<ReviewPage>("/v1/review", { query: { ...query }, signal });
}

export function getStats(
  api: ApiClient,
  range: { since?: string; until?: string },
  signal?: AbortSignal,
): Promise<Stats> {
  return api.json<Stats>("/v1/stats", { query: range, signal });
}
