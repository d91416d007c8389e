import { heatClass, rowTotals } from "../../lib/heat";
import { formatPercent } from "../../lib/format";

/** Rows: the true class; columns: the predicted one; shaded by the share of the row. */
export function ConfusionMatrix({ labels, matrix }: { labels: readonly string[]; matrix: readonly (readonly number[])[] }) {
  const totals = rowTotals(matrix);
  return (
    <>
      <h4>Confusion matrix</h4>
      <p className="muted small">
        Rows are the true label, columns the predicted one; the colour is the share of the row
        (green: right, red: mistaken).
      </p>
      <div className="table-scroll">
        <table className="data confusion" data-testid="confusion-matrix">
          <caption className="visually-hidden">Confusion matrix: rows true label, columns predicted label</caption>
          <thead>
            <tr>
              <th scope="col">True ↓ Predicted →</th>
              {labels.map((l) => (
                <th key={l} scope="col">
                  {l}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {matrix.map((row, r) => (
              <tr key={labels[r] ?? r}>
                <th scope="row">{labels[r] ?? r}</th>
                {row.map((count, c) => (
                  <td
                    key={labels[c] ?? c}
                    className={`num ${heatClass(matrix, r, c)}`}
                    title={`${labels[r]} → ${labels[c]}: ${count} (${formatPercent(totals[r] ? count / totals[r] : null)})`}
                  >
                    {count}
                  </td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}
