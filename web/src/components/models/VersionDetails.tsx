import { getVersion } from "../../api/models";
import { useApi } from "../../auth/context";
import { formatMetric, formatPercent } from "../../lib/format";
import { reliabilitySeries } from "../../lib/models";
import { useQuery } from "../../lib/useQuery";
import { ChartFigure } from "../charts/ChartFigure";
import { ReliabilityChart } from "../charts/ReliabilityChart";
import { ErrorNote, Loading } from "../ErrorNote";
import { FlatTable } from "../FlatTable";
import { ConfusionMatrix } from "./ConfusionMatrix";

/** One registered version: metrics, per-class scores, confusion matrix, calibration. */
export function VersionDetails({ name, version }: { name: string; version: string }) {
  const api = useApi();
  const detail = useQuery(`version:${name}:${version}`, (signal) => getVersion(api, name, version, signal));
  if (detail.error !== undefined) return <ErrorNote error={detail.error} />;
  const d = detail.data;
  if (!d) return <Loading what={`version ${version}`} />;
  const evaluation = d.evaluation;
  const reliability = evaluation ? reliabilitySeries(evaluation.reliability.bins) : [];
  return (
    <div className="version-details" data-testid="version-details" data-version={version}>
      <h3>
        Version <code>{version}</code>
      </h3>
      <div className="two-columns">
        <div>
          <h4>Metrics</h4>
          <div className="table-scroll">
            <table className="data" data-testid="version-metrics">
              <tbody>
                {Object.entries(d.metrics).map(([k, v]) => (
                  <tr key={k}>
                    <th scope="row">{k}</th>
                    <td className="num">{formatMetric(k, v)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </div>
        <div>
          <h4>Labels and heads</h4>
          <p className="small">
            {d.labels.length} labels: {d.labels.slice(0, 40).join(", ")}
            {d.labels.length > 40 ? ", …" : ""}
          </p>
          {Object.entries(d.heads).map(([head, values]) => (
            <p className="small" key={head}>
              <strong>{head}</strong>: {values.join(", ")}
            </p>
          ))}
        </div>
      </div>
      {evaluation === null ? (
        <p className="muted">No held-out evaluation was recorded for this version.</p>
      ) : (
        <>
          {(evaluation.top1 != null || evaluation.images != null) && (
            <p data-testid="heldout-summary">
              Held-out top-1 {formatPercent(evaluation.top1 ?? null)} on {evaluation.images ?? "–"} images
              {evaluation.temperature != null ? ` · calibration temperature ${evaluation.temperature}` : ""}
            </p>
          )}
          <h4>Per class</h4>
          <div className="table-scroll">
            <table className="data" data-testid="per-class">
              <thead>
                <tr>
                  <th scope="col">Label</th>
                  <th scope="col" className="num">Precision</th>
                  <th scope="col" className="num">Recall</th>
                  <th scope="col" className="num">F1</th>
                  <th scope="col" className="num">Support</th>
                </tr>
              </thead>
              <tbody>
                {evaluation.per_class.map((c) => (
                  <tr key={c.label}>
                    <th scope="row">{c.label}</th>
                    <td className="num">{formatPercent(c.precision)}</td>
                    <td className="num">{formatPercent(c.recall)}</td>
                    <td className="num">{formatPercent(c.f1)}</td>
                    <td className="num">{c.support}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <ConfusionMatrix labels={evaluation.labels} matrix={evaluation.confusion_matrix} />
          <ChartFigure
            title={`Reliability (ECE ${formatPercent(evaluation.reliability.ece, 2)})`}
            summary="Accuracy per confidence bin against perfect calibration; bars under the line are over-confident."
            testId="chart-reliability"
            rows={reliability}
            rowKey={(r) => r.bin}
            columns={[
              { header: "Confidence", cell: (r) => r.bin },
              { header: "Images", cell: (r) => r.count, numeric: true },
              { header: "Mean confidence", cell: (r) => (r.confidence === null ? "–" : `${r.confidence}%`), numeric: true },
              { header: "Accuracy", cell: (r) => (r.accuracy === null ? "–" : `${r.accuracy}%`), numeric: true },
            ]}
          >
            <ReliabilityChart data={reliability} />
          </ChartFigure>
        </>
      )}
      <details>
        <summary>Training configuration</summary>
        <FlatTable value={d.training_config} caption="Training configuration" />
      </details>
    </div>
  );
}
