import { useApi } from "../auth/context";
import { cachedCategories } from "./categories";
import { useQuery, type QueryResult } from "./useQuery";
import type { Categories } from "../api/types";

/** The labels and attribute values of a model (name or name:version; null: load nothing). */
export function useCategories(model: string | null): QueryResult<Categories> {
  const api = useApi();
  return useQuery(model === null ? null : `categories:${model}`, () => cachedCategories(api, model ?? undefined));
}
