import { CartesianGrid, Line, LineChart, Tooltip, XAxis, YAxis } from "recharts";
import { CHART } from "./chartPalette";

/** A count over time (days on the x axis). */
export function LineCountChart({
  data,
  xKey,
  yKey,
  name,
}: {
  data: readonly object[];
  xKey: string;
  yKey: string;
  name: string;
}) {
  return (
    <LineChart
      responsive
      style={{ width: "100%", height: 260 }}
      data={[...data]}
      margin={{ top: 8, right: 16, bottom: 8, left: 0 }}
      accessibilityLayer={false}
    >
      <CartesianGrid strokeDasharray="3 3" stroke={CHART.grid} strokeOpacity={0.3} />
      <XAxis dataKey={xKey} tick={{ fontSize: 12 }} minTickGap={24} />
      <YAxis allowDecimals={false} width={48} tick={{ fontSize: 12 }} />
      <Tooltip />
      <Line
        type="linear"
        dataKey={yKey}
        name={name}
        stroke={CHART.primary}
        strokeWidth={2}
        dot={data.length <= 31}
        isAnimationActive={false}
      />
    </LineChart>
  );
}
