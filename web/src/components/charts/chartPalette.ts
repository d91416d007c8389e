// Chart colours (SVG fill and stroke attributes), readable on the light and dark themes.
export const CHART = {
  primary: "#3b6fd4",
  secondary: "#d9822b",
  good: "#2f9e62",
  grid: "#8a94a6",
} as const;
