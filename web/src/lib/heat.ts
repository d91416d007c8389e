// The colour of a confusion-matrix cell: its share of the row (the true class), in
// HEAT_LEVELS steps, green on the diagonal (right answers), red elsewhere (mistakes).

export const HEAT_LEVELS = 10;

/** 0 for nothing, then 1..HEAT_LEVELS by the share of `total` (any count > 0 is at least 1). */
export function heatLevel(count: number, total: number): number {
  if (!(count > 0) || !(total > 0)) return 0;
  const share = Math.min(1, count / total);
  return Math.max(1, Math.ceil(share * HEAT_LEVELS));
}

export function rowTotals(matrix: readonly (readonly number[])[]): number[] {
  return matrix.map((row) => row.reduce((sum, n) => sum + n, 0));
}

/** The CSS class of cell (row, column): heat-ok-N on the diagonal, heat-miss-N elsewhere. */
export function heatClass(matrix: readonly (readonly number[])[], row: number, column: number): string {
  const counts = matrix[row] ?? [];
  const total = counts.reduce((sum, n) => sum + n, 0);
  const level = heatLevel(counts[column] ?? 0, total);
  return `heat-${row === column ? "ok" : "miss"}-${level}`;
}
