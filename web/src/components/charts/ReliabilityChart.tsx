import { Bar, CartesianGrid, ComposedChart, Line, Tooltip, XAxis, YAxis } from "recharts";
import { CHART } from "./chartPalette";

export interface ReliabilityPoint {
  bin: string;
  /** Percent 0..100, or null for an empty bin. */
  accuracy: number | null;
  confidence: number | null;
  /** The bin's middle as a percent: where a perfectly calibrated model's accuracy would be. */
  ideal: number;
  count: number;
}

/** Accuracy per confidence bin (bars) against the diagonal of perfect calibration (line). */
export function ReliabilityChart({ data }: { data: readonly ReliabilityPoint[] }) {
  return (
    <ComposedChart
      responsive
      style={{ width: "100%", height: 260 }}
      data={[...data]}
      margin={{ top: 8, right: 8, bottom: 8, left: 0 }}
      accessibilityLayer={false}
    >
      <CartesianGrid strokeDasharray="3 3" stroke={CHART.grid} strokeOpacity={0.3} />
      <XAxis dataKey="bin" tick={{ fontSize: 11 }} />
      <YAxis domain={[0, 100]} tickFormatter={(v: number) => `${v}%`} width={48} tick={{ fontSize: 12 }} />
      <Tooltip formatter={(v) => (v === null || v === undefined ? "–" : `${String(v)}%`)} />
      <Bar dataKey="accuracy" name="Accuracy" fill={CHART.primary} isAnimationActive={false} />
      <Line
        dataKey="ideal"
        name="Perfect calibration"
        stroke={CHART.secondary}
        strokeDasharray="4 4"
        dot={false}
        isAnimationActive={false}
      />
    </ComposedChart>
  );
}
