import { useId, type ReactNode } from "react";

export interface TableColumn<Row> {
  header: string;
  cell: (row: Row) => ReactNode;
  numeric?: boolean;
}

/**
 * A chart with its title, a short text summary as its accessible name, and the same data
 * as a table (collapsed) for screen readers, keyboards and copying.
 */
export function ChartFigure<Row>({
  title,
  summary,
  testId,
  rows,
  columns,
  rowKey,
  children,
}: {
  title: string;
  summary: string;
  testId: string;
  rows: readonly Row[];
  columns: readonly TableColumn<Row>[];
  rowKey: (row: Row, index: number) => string;
  children: ReactNode;
}) {
  const titleId = useId();
  return (
    <figure className="card chart" data-testid={testId} aria-labelledby={titleId}>
      <figcaption id={titleId}>
        <h2>{title}</h2>
      </figcaption>
      {rows.length === 0 ? (
        <p className="muted">No data yet.</p>
      ) : (
        <>
          <div className="chart-area" role="img" aria-label={`${title}. ${summary}`}>
            {children}
          </div>
          <details className="chart-table">
            <summary>Data table</summary>
            <div className="table-scroll">
              <table className="data">
                <caption className="visually-hidden">{title}</caption>
                <thead>
                  <tr>
                    {columns.map((c) => (
                      <th key={c.header} scope="col" className={c.numeric ? "num" : undefined}>
                        {c.header}
                      </th>
                    ))}
                  </tr>
                </thead>
                <tbody>
                  {rows.map((row, i) => (
                    <tr key={rowKey(row, i)}>
                      {columns.map((c) => (
                        <td key={c.header} className={c.numeric ? "num" : undefined}>
                          {c.cell(row)}
                        </td>
                      ))}
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </details>
        </>
      )}
    </figure>
  );
}
