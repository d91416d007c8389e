import type { ApiClient } from "./client";
import type {
  ActivateAnswer,
  EvaluationList,
  ModelsAnswer,
  Rollout,
  RolloutList,
  VersionDetail,
  VersionList,
} from "./types";

const modelPath = (name: string): string => `/v1/models/${encodeURIComponent(name)}`;

export function getModels(api: ApiClient, signal?: AbortSignal): Promise<ModelsAnswer> {
  return api.json<ModelsAnswer>("/v1/models", { signal });
}

export function getVersions(api: ApiClient, name: string, signal?: AbortSignal): Promise<VersionList> {
  return api.json<VersionList>(`${modelPath(name)}/versions`, { signal });
}

export function getVersion(
  api: ApiClient,
  name: string,
  version: string,
  signal?: AbortSignal,
): Promise<VersionDetail> {
  return api.json<VersionDetail>(`${modelPath(name)}/versions/${encodeURIComponent(version)}`, {
    signal,
  });
}

export function activateVersion(api: ApiClient, name: string, version: string): Promise<ActivateAnswer> {
  return api.json<ActivateAnswer>(`/v1/admin/models/${encodeURIComponent(name)}/activate`, {
    method: "POST",
    json: { version },
  });
}

export function getEvaluations(
  api: ApiClient,
  name: string,
  signal?: AbortSignal,
): Promise<EvaluationList> {
  return api.json<EvaluationList>("/v1/admin/evaluations", {
    query: { model: name, limit: 20 },
    signal,
  });
}

export function getRollouts(api: ApiClient, name: string, signal?: AbortSignal): Promise<RolloutList> {
  return api.json<RolloutList>("/v1/admin/rollouts", { query: { model: name }, signal });
}

export function startRollout(
  api: ApiClient,
  body: { model: string; version: string; share: number },
): Promise<Rollout> {
  return api.json<Rollout>("/v1/admin/rollouts", { method: "POST", json: body });
}

export function endRollout(api: ApiClient, id: number, action: "promote" | "rollback"): Promise<Rollout> {
  // The body's optional `reason` is left out: {} is "no reason".
  return api.json<Rollout>(`/v1/admin/rollouts/${id}/${action}`, { method: "POST", json: {} });
}
