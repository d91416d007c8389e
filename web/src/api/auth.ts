import type { ApiClient } from "./client";
import type { WhoAmI } from "./types";

export function whoami(api: ApiClient, signal?: AbortSignal): Promise<WhoAmI> {
  return api.json<WhoAmI>("/v1/auth/whoami", { signal });
}
