// Numbers, sizes and times as the pages show them.

/** 0.9312 -> "93.1%"; null or NaN -> "–". */
export function formatPercent(fraction: number | null | undefined, digits = 1): string {
  if (fraction === null || fraction === undefined || !Number.isFinite(fraction)) return "–";
  return `${(fraction * 100).toFixed(digits)}%`;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 48213 -> "47.1 KiB" (binary units: what the service's limits are written in). */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes) || bytes < 0) return "–";
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const text = unit === 0 ? String(value) : value < 10 ? value.toFixed(2) : value.toFixed(1);
  return `${text} ${UNITS[unit]}`;
}

/** 38.94 -> "38.9 ms"; 1234 -> "1.23 s". */
export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
}

/** A number with thousands separators: 12345 -> "12,345". */
export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  return new Intl.NumberFormat("en-US").format(n);
}

/** A metric: fractions in [0, 1] as percentages, other numbers with 4 significant digits. */
export function formatMetric(name: string, value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const fractional = /acc|top|precision|recall|f1|agreement|rate|ratio|share/i.test(name);
  if (fractional && value >= 0 && value <= 1) return formatPercent(value, 2);
  return Number.isInteger(value) ? formatCount(value) : String(Number(value.toPrecision(4)));
}

/**
 * A time the service sent: ISO 8601, and UTC when it names no zone (SQLite's datetimes
 * come back without one).
 */
export function parseServerTime(text: string): Date {
  const zoned = /(?:Z|[+-]\d{2}:?\d{2})$/i.test(text) || /^\d{4}-\d{2}-\d{2}$/.test(text);
  return new Date(zoned ? text : `${text}Z`);
}

/** "2024-03-10 14:05" in the viewer's time zone (or the one given), or "–". */
export function formatDateTime(text: string | null | undefined, timeZone?: string): string {
  if (!text) return "–";
  const date = parseServerTime(text);
  if (Number.isNaN(date.getTime())) return text;
  const parts = new Intl.DateTimeFormat("en-CA", {
    timeZone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    hourCycle: "h23",
  }).formatToParts(date);
  const part = (type: Intl.DateTimeFormatPartTypes): string =>
    parts.find((p) => p.type === type)?.value ?? "";
  return `${part("year")}-${part("month")}-${part("day")} ${part("hour")}:${part("minute")}`;
}

/** The first 12 hex digits of a sha256 image id. */
export function shortId(id: string): string {
  return id.length > 12 ? id.slice(0, 12) : id;
}

/** The day after an ISO date ("2024-03-10" -> "2024-03-11"): an inclusive "to" bound. */
export function nextDay(isoDate: string): string {
  const date = new Date(`${isoDate}T00:00:00Z`);
  if (Number.isNaN(date.getTime())) return isoDate;
  date.setUTCDate(date.getUTCDate() + 1);
  return date.toISOString().slice(0, 10);
}
