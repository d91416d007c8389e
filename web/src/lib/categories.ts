import { getCategories } from "../api/classify";
import type { ApiClient } from "../api/client";
import type { Categories } from "../api/types";

// One GET /v1/categories per model tag and signed-in key (a new key, a new cache).
const caches = new WeakMap<ApiClient, Map<string, Promise<Categories>>>();

export function cachedCategories(api: ApiClient, model: string | undefined): Promise<Categories> {
  let cache = caches.get(api);
  if (!cache) {
    cache = new Map();
    caches.set(api, cache);
  }
  const key = model ?? "";
  let found = cache.get(key);
  if (!found) {
    found = getCategories(api, model || undefined);
    cache.set(key, found);
    found.catch(() => cache.delete(key)); // a failure is asked again next time
  }
  return found;
}
