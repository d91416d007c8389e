import { Bar, BarChart, CartesianGrid, Tooltip, XAxis, YAxis } from "recharts";
import { CHART } from "./chartPalette";

/** A category name short enough for an axis (the tooltip and the data table have it whole). */
function shorten(text: string): string {
  return text.length > 14 ? `${text.slice(0, 13)}…` : text;
}

/** Counts (or percentages) per category as vertical bars. */
export function BarCountChart({
  data,
  xKey,
  yKey,
  name,
  percent = false,
  angled = false,
}: {
  data: readonly object[];
  xKey: string;
  yKey: string;
  name: string;
  percent?: boolean;
  angled?: boolean;
}) {
  return (
    <BarChart
      responsive
      style={{ width: "100%", height: angled ? 300 : 260 }}
      data={[...data]}
      margin={{ top: 8, right: 8, bottom: angled ? 48 : 8, left: 0 }}
      accessibilityLayer={false}
    >
      <CartesianGrid strokeDasharray="3 3" stroke={CHART.grid} strokeOpacity={0.3} vertical={false} />
      <XAxis
        dataKey={xKey}
        interval={angled ? 0 : "preserveStartEnd"}
        angle={angled ? -40 : 0}
        textAnchor={angled ? "end" : "middle"}
        tick={{ fontSize: 12 }}
        tickFormatter={(v: unknown) => shorten(String(v))}
      />
      <YAxis
        allowDecimals={percent}
        domain={percent ? [0, 100] : [0, "auto"]}
        tickFormatter={(v: number) => (percent ? `${v}%` : String(v))}
        width={48}
        tick={{ fontSize: 12 }}
      />
      <Tooltip formatter={(v) => (percent ? `${String(v)}%` : String(v))} />
      <Bar dataKey={yKey} name={name} fill={CHART.primary} isAnimationActive={false} />
    </BarChart>
  );
}
