// The Images page's filters live in the URL's query (so back and reload keep them), and
// become GET /v1/images's query.
import type { ImageFilters } from "../api/catalog";
import { nextDay } from "./format";

export const FILTER_FIELDS = [
  "label",
  "predicted_label",
  "source",
  "attribute",
  "model",
  "from",
  "to",
] as const;

export type FilterField = (typeof FILTER_FIELDS)[number];
export type FilterValues = Record<FilterField, string>;

export const PAGE_LIMIT = 24;

export function filtersFromSearch(search: URLSearchParams): FilterValues {
  return Object.fromEntries(FILTER_FIELDS.map((f) => [f, search.get(f) ?? ""])) as FilterValues;
}

export function offsetFromSearch(search: URLSearchParams): number {
  const n = Number(search.get("offset") ?? 0);
  return Number.isInteger(n) && n > 0 ? n : 0;
}

export function searchFromFilters(values: FilterValues, offset = 0): URLSearchParams {
  const out = new URLSearchParams();
  for (const f of FILTER_FIELDS) {
    const v = values[f].trim();
    if (v) out.set(f, v);
  }
  if (offset > 0) out.set("offset", String(offset));
  return out;
}

/** The API's query: "to" is a whole day, so it becomes the next day's midnight (exclusive). */
export function apiFilters(values: FilterValues): ImageFilters {
  const v = (f: FilterField) => values[f].trim() || undefined;
  const to = v("to");
  return {
    label: v("label"),
    predicted_label: v("predicted_label"),
    source: v("source"),
    attribute: v("attribute"),
    model: v("model"),
    created_after: v("from"),
    created_before: to ? nextDay(to) : undefined,
  };
}
