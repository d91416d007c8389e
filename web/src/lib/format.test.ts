import { describe, expect, it } from "vitest";
import {
  formatBytes,
  formatCount,
  formatDateTime,
  formatMetric,
  formatMs,
  formatPercent,
  nextDay,
  parseServerTime,
  shortId,
} from "./format";

describe("formatters", () => {
  it("percent", () => {
    expect(formatPercent(0.9312)).toBe("93.1%");
    expect(formatPercent(1)).toBe("100.0%");
    expect(formatPercent(0.5, 0)).toBe("50%");
    expect(formatPercent(null)).toBe("–");
    expect(formatPercent(Number.NaN)).toBe("–");
  });

  it("bytes", () => {
    expect(formatBytes(125)).toBe("125 B");
    expect(formatBytes(48213)).toBe("47.1 KiB");
    expect(formatBytes(2048)).toBe("2.00 KiB");
    expect(formatBytes(5 * 1024 * 1024)).toBe("5.00 MiB");
    expect(formatBytes(-1)).toBe("–");
  });

  it("milliseconds", () => {
    expect(formatMs(38.94)).toBe("38.9 ms");
    expect(formatMs(5.123)).toBe("5.12 ms");
    expect(formatMs(1234)).toBe("1.23 s");
    expect(formatMs(null)).toBe("–");
  });

  it("counts and metrics", () => {
    expect(formatCount(12345)).toBe("12,345");
    expect(formatMetric("top1", 0.9912)).toBe("99.12%");
    expect(formatMetric("val_loss", 0.123456)).toBe("0.1235");
    expect(formatMetric("epochs", 12)).toBe("12");
  });

  it("dates: ISO with or without a zone (no zone is UTC)", () => {
    expect(formatDateTime("2024-03-10T12:05:00Z", "UTC")).toBe("2024-03-10 12:05");
    expect(formatDateTime("2024-03-10T12:05:00", "UTC")).toBe("2024-03-10 12:05");
    expect(formatDateTime("2024-03-10T14:05:00+02:00", "UTC")).toBe("2024-03-10 12:05");
    expect(formatDateTime("2024-03-10T12:05:00Z", "Asia/Tokyo")).toBe("2024-03-10 21:05");
    expect(formatDateTime(null)).toBe("–");
    expect(formatDateTime("not a date")).toBe("not a date");
    expect(parseServerTime("2024-03-10T00:00:00.123456").toISOString()).toBe("2024-03-10T00:00:00.123Z");
  });

  it("ids and days", () => {
    expect(shortId("a".repeat(64))).toBe("aaaaaaaaaaaa");
    expect(nextDay("2024-02-28")).toBe("2024-02-29");
    expect(nextDay("2024-12-31")).toBe("2025-01-01");
  });
});
