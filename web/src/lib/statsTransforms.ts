// GET /v1/stats's maps, as the rows the charts and their data tables draw.
import type { AgreementCounts, HistogramBin } from "../api/types";
import { formatPercent } from "./format";

export interface DayCount {
  day: string;
  count: number;
}

/** Days in order, with the days between the first and last that had nothing as 0. */
export function perDaySeries(perDay: Record<string, number> | undefined): DayCount[] {
  const days = Object.keys(perDay ?? {})
    .filter((d) => /^\d{4}-\d{2}-\d{2}$/.test(d))
    .sort();
  if (days.length === 0) return [];
  const out: DayCount[] = [];
  const last = new Date(`${days[days.length - 1]}T00:00:00Z`);
  for (let at = new Date(`${days[0]}T00:00:00Z`); at <= last; at.setUTCDate(at.getUTCDate() + 1)) {
    const day = at.toISOString().slice(0, 10);
    out.push({ day, count: perDay?.[day] ?? 0 });
    if (out.length > 3660) break; // ten years: a guard against a bad date, not a real case
  }
  return out;
}

export interface LabelCount {
  label: string;
  count: number;
  /** True for the row that sums the labels past the limit. */
  other?: boolean;
}

/** The `limit` most frequent labels (ties by name), then one row for all the others. */
export function topLabels(perLabel: Record<string, number> | undefined, limit = 15): LabelCount[] {
  const rows = Object.entries(perLabel ?? {})
    .map(([label, count]) => ({ label, count }))
    .sort((a, b) => b.count - a.count || a.label.localeCompare(b.label));
  if (rows.length <= limit) return rows;
  const rest = rows.slice(limit);
  const restCount = rest.reduce((sum, r) => sum + r.count, 0);
  return [
    ...rows.slice(0, limit),
    { label: `${rest.length} other labels`, count: restCount, other: true },
  ];
}

export interface BinCount {
  bin: string;
  lower: number;
  upper: number;
  count: number;
}

/** Confidence bins in order, named "0–10%". */
export function histogramSeries(bins: readonly HistogramBin[] | undefined): BinCount[] {
  return [...(bins ?? [])]
    .sort((a, b) => a.lower - b.lower)
    .map((b) => ({
      bin: `${Math.round(b.lower * 100)}–${Math.round(b.upper * 100)}%`,
      lower: b.lower,
      upper: b.upper,
      count: b.count,
    }));
}

export interface AgreementRow {
  model: string;
  labelled: number;
  agreed: number;
  /** Percent (0..100) for the chart; null when nothing was labelled. */
  agreementPercent: number | null;
  agreementText: string;
}

/** Feedback agreement per model version, the most labelled first. */
export function agreementSeries(
  perModel: Record<string, AgreementCounts> | undefined,
): AgreementRow[] {
  return Object.entries(perModel ?? {})
    .map(([model, c]) => {
      const agreement = c.agreement ?? (c.labelled > 0 ? c.agreed / c.labelled : null);
      return {
        model,
        labelled: c.labelled,
        agreed: c.agreed,
        agreementPercent: agreement === null ? null : Math.round(agreement * 1000) / 10,
        agreementText: formatPercent(agreement),
      };
    })
    .sort((a, b) => b.labelled - a.labelled || a.model.localeCompare(b.model));
}

/** A short sentence for a chart's accessible name: the total and the largest entry. */
export function describeCounts(what: string, rows: readonly { name: string; count: number }[]): string {
  if (rows.length === 0) return `${what}: no data.`;
  const total = rows.reduce((sum, r) => sum + r.count, 0);
  const top = rows.reduce((best, r) => (r.count > best.count ? r : best));
  return `${what}: ${rows.length} entries, ${total} in all; the largest is ${top.name} with ${top.count}.`;
}
