import type { ServedModel } from "../api/types";

/** "digits:v3" -> "v3"; a bare version stays as it is. */
export function versionOf(tagOrVersion: string): string {
  const at = tagOrVersion.lastIndexOf(":");
  return at >= 0 ? tagOrVersion.slice(at + 1) : tagOrVersion;
}

/** Served models grouped by name, names in order of first appearance. */
export function groupByName(models: readonly ServedModel[]): Map<string, ServedModel[]> {
  const out = new Map<string, ServedModel[]>();
  for (const m of models) out.set(m.name, [...(out.get(m.name) ?? []), m]);
  return out;
}

/** The metric names worth a column: accuracy-like ones first, at most `limit`. */
export function headlineMetrics(metricsList: readonly Record<string, number>[], limit = 3): string[] {
  const names = new Set<string>();
  metricsList.forEach((m) => Object.keys(m).forEach((k) => names.add(k)));
  const rank = (n: string) => (/top1|top_1|accuracy|acc$/i.test(n) ? 0 : /f1|top5|top_5/i.test(n) ? 1 : /loss|ece/i.test(n) ? 2 : 3);
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b)).slice(0, limit);
}

/** A canary share typed as a percentage ("10") as the API's fraction (0.1); null if out of range. */
export function shareFromPercent(text: string): number | null {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0 || n >= 100) return null;
  return Math.round(n * 100) / 10000;
}

/** A version's reliability bins as chart points (percentages). */
export function reliabilitySeries(
  bins: readonly { lower: number; upper: number; count: number; confidence: number | null; accuracy: number | null }[],
): { bin: string; accuracy: number | null; confidence: number | null; ideal: number; count: number }[] {
  const pct = (v: number | null) => (v === null ? null : Math.round(v * 1000) / 10);
  return [...bins]
    .sort((a, b) => a.lower - b.lower)
    .map((b) => ({
      bin: `${Math.round(b.lower * 100)}–${Math.round(b.upper * 100)}%`,
      accuracy: b.count > 0 ? pct(b.accuracy) : null,
      confidence: b.count > 0 ? pct(b.confidence) : null,
      ideal: Math.round(((b.lower + b.upper) / 2) * 1000) / 10,
      count: b.count,
    }));
}
