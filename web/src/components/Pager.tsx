import { formatCount } from "../lib/format";

export function Pager({
  offset,
  shown,
  total,
  limit,
  onMove,
  busy,
}: {
  offset: number;
  shown: number;
  total: number;
  limit: number;
  onMove: (offset: number) => void;
  busy?: boolean;
}) {
  const first = total === 0 ? 0 : offset + 1;
  const last = offset + shown;
  return (
    <nav className="pager" aria-label="Pages">
      <button
        type="button"
        onClick={() => onMove(Math.max(0, offset - limit))}
        disabled={busy || offset === 0}
        data-testid="page-previous"
      >
        ← Previous
      </button>
      <span role="status" data-testid="page-status">
        {formatCount(first)}–{formatCount(last)} of {formatCount(total)}
      </span>
      <button
        type="button"
        onClick={() => onMove(offset + limit)}
        disabled={busy || last >= total}
        data-testid="page-next"
      >
        Next →
      </button>
    </nav>
  );
}
