// A JSON value of unknown shape (an evaluation's scores or report, a training config) as
// rows of "path: value", for a generic table. Values become text; nothing is HTML.

export interface FlatRow {
  path: string;
  value: string;
  numeric: boolean;
}

const MAX_ROWS = 400;

function scalarText(value: unknown): string | null {
  if (value === null) return "null";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
  if (typeof value === "string" || typeof value === "boolean") return String(value);
  return null;
}

export function flatten(value: unknown, prefix = ""): FlatRow[] {
  const rows: FlatRow[] = [];
  const walk = (v: unknown, path: string, depth: number) => {
    if (rows.length >= MAX_ROWS) return;
    const text = scalarText(v);
    if (text !== null) {
      rows.push({ path: path || "(value)", value: text, numeric: typeof v === "number" });
      return;
    }
    if (Array.isArray(v)) {
      const scalars = v.map(scalarText);
      if (scalars.every((s) => s !== null)) {
        rows.push({ path: path || "(value)", value: scalars.join(", "), numeric: false });
        return;
      }
      v.forEach((item, i) => walk(item, `${path}[${i}]`, depth + 1));
      return;
    }
    if (typeof v === "object" && v !== null && depth < 8) {
      const entries = Object.entries(v);
      if (entries.length === 0) rows.push({ path: path || "(value)", value: "{}", numeric: false });
      for (const [k, item] of entries) walk(item, path ? `${path}.${k}` : k, depth + 1);
    }
  };
  walk(value, prefix, 0);
  if (rows.length >= MAX_ROWS) rows.push({ path: "…", value: "more not shown", numeric: false });
  return rows;
}
