import { useId, useState, type FormEvent } from "react";
import { getStats } from "../api/catalog";
import { useApi } from "../auth/context";
import { BarCountChart } from "../components/charts/BarCountChart";
import { ChartFigure } from "../components/charts/ChartFigure";
import { LineCountChart } from "../components/charts/LineCountChart";
import { ErrorNote, Loading } from "../components/ErrorNote";
import { formatCount, formatPercent, nextDay } from "../lib/format";
import {
  agreementSeries,
  describeCounts,
  histogramSeries,
  perDaySeries,
  topLabels,
} from "../lib/statsTransforms";
import { usePageTitle } from "../lib/usePageTitle";
import { useQuery } from "../lib/useQuery";

export function StatsPage() {
  usePageTitle("Stats");
  const api = useApi();
  const ids = { from: useId(), to: useId() };
  const [range, setRange] = useState<{ from: string; to: string }>({ from: "", to: "" });
  const query = {
    since: range.from || undefined,
    until: range.to ? nextDay(range.to) : undefined,
  };
  const stats = useQuery(`stats:${range.from}:${range.to}`, (signal) => getStats(api, query, signal));
  const data = stats.data ?? stats.previous;

  const apply = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    setRange({ from: String(form.get("from") ?? ""), to: String(form.get("to") ?? "") });
  };

  const days = perDaySeries(data?.predictions.per_day);
  const labels = topLabels(data?.predictions.per_label, 15);
  const bins = histogramSeries(data?.predictions.confidence_histogram);
  const agreement = agreementSeries(data?.feedback?.per_model);

  return (
    <section>
      <h1>Stats</h1>
      <form className="card toolbar" onSubmit={apply} aria-label="Time range">
        <div className="field">
          <label htmlFor={ids.from}>From</label>
          <input id={ids.from} name="from" type="date" defaultValue={range.from} data-testid="stats-from" />
        </div>
        <div className="field">
          <label htmlFor={ids.to}>To</label>
          <input id={ids.to} name="to" type="date" defaultValue={range.to} data-testid="stats-to" />
        </div>
        <button type="submit" className="primary" data-testid="stats-apply">
          Show
        </button>
      </form>
      {stats.error !== undefined && <ErrorNote error={stats.error} />}
      {!data && stats.loading && <Loading what="statistics" />}
      {data && (
        <div aria-busy={stats.loading}>
          <dl className="summary" data-testid="stats-summary">
            <div>
              <dt>Stored images</dt>
              <dd>{formatCount(data.images.stored)}</dd>
            </div>
            <div>
              <dt>Predictions</dt>
              <dd>{formatCount(data.predictions.total)}</dd>
            </div>
            <div>
              <dt>From the cache</dt>
              <dd>{formatPercent(data.predictions.cache_hit_ratio)}</dd>
            </div>
            <div>
              <dt>Labels given</dt>
              <dd>{formatCount(data.labels.total)}</dd>
            </div>
            {Object.entries(data.labels.per_source).map(([source, n]) => (
              <div key={source}>
                <dt>Labels by {source}</dt>
                <dd>{formatCount(n)}</dd>
              </div>
            ))}
          </dl>
          <div className="charts">
            <ChartFigure
              title="Predictions per day (UTC)"
              summary={describeCounts("Predictions per day", days.map((d) => ({ name: d.day, count: d.count })))}
              testId="chart-per-day"
              rows={days}
              rowKey={(r) => r.day}
              columns={[
                { header: "Day", cell: (r) => r.day },
                { header: "Predictions", cell: (r) => formatCount(r.count), numeric: true },
              ]}
            >
              <LineCountChart data={days} xKey="day" yKey="count" name="Predictions" />
            </ChartFigure>
            <ChartFigure
              title="Predicted labels"
              summary={describeCounts("Predictions per label", labels.map((l) => ({ name: l.label, count: l.count })))}
              testId="chart-labels"
              rows={labels}
              rowKey={(r) => `${r.other ? "other" : "label"}:${r.label}`}
              columns={[
                { header: "Label", cell: (r) => r.label },
                { header: "Predictions", cell: (r) => formatCount(r.count), numeric: true },
              ]}
            >
              <BarCountChart data={labels} xKey="label" yKey="count" name="Predictions" angled={labels.length > 6} />
            </ChartFigure>
            <ChartFigure
              title="Confidence of the top label"
              summary={describeCounts("Predictions per confidence bin", bins.map((b) => ({ name: b.bin, count: b.count })))}
              testId="chart-confidence"
              rows={bins}
              rowKey={(r) => r.bin}
              columns={[
                { header: "Confidence", cell: (r) => r.bin },
                { header: "Predictions", cell: (r) => formatCount(r.count), numeric: true },
              ]}
            >
              <BarCountChart data={bins} xKey="bin" yKey="count" name="Predictions" angled />
            </ChartFigure>
            <ChartFigure
              title="Feedback agreement per model version"
              summary={
                agreement.length
                  ? `${agreement.length} model versions; ${agreement
                      .slice(0, 3)
                      .map((a) => `${a.model} ${a.agreementText} of ${a.labelled}`)
                      .join("; ")}.`
                  : "No feedback yet."
              }
              testId="chart-agreement"
              rows={agreement}
              rowKey={(r) => r.model}
              columns={[
                { header: "Model version", cell: (r) => r.model },
                { header: "Labelled", cell: (r) => formatCount(r.labelled), numeric: true },
                { header: "Agreed", cell: (r) => formatCount(r.agreed), numeric: true },
                { header: "Agreement", cell: (r) => r.agreementText, numeric: true },
              ]}
            >
              <BarCountChart data={agreement} xKey="model" yKey="agreementPercent" name="Agreement" percent angled />
            </ChartFigure>
          </div>
        </div>
      )}
    </section>
  );
}
