import { flatten } from "../lib/flatten";

/** Any JSON value as a two-column table of paths and values (all text). */
export function FlatTable({ value, caption, testId }: { value: unknown; caption: string; testId?: string }) {
  const rows = flatten(value);
  if (rows.length === 0) return <p className="muted">{caption}: nothing.</p>;
  return (
    <div className="table-scroll">
      <table className="data flat" data-testid={testId}>
        <caption className="visually-hidden">{caption}</caption>
        <tbody>
          {rows.map((r, i) => (
            <tr key={`${i}:${r.path}`}>
              <th scope="row">{r.path}</th>
              <td className={r.numeric ? "num" : undefined}>{r.value}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
