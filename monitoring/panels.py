"""The panel kinds of ImageIQ's dashboard, one look each: graph, single number, heatmap, bars.

Every query reads the data source the `datasource` variable picks and the series of the
`namespace` and `job` the dashboard's variables select; dashboards.py says what to plot.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
# The scrape job's series: what the ServiceMonitor adds to every ImageIQ metric.
SEL = 'namespace="$namespace", job="$job"'
# The bulk-job workers' series: the chart scrapes them through the Service "<fullname>-worker",
# so their job is the server's with "-worker" after it.
WORKER_SEL = 'namespace="$namespace", job="$job-worker"'
# Kubernetes objects and GPUs are not scraped from the pods: only the namespace matches.
NS = 'namespace="$namespace"'
RATE = "$__rate_interval"

Panel = Builder[models.Panel]
Query = Builder[Dataquery]


def query(expr: str, legend: str = "__auto", *, ref_id: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)


def queries(*pairs: tuple[str, str]) -> list[Query]:
    """One query per (expression, legend), with refIds A, B, C... in order."""
    return [query(e, legend, ref_id=chr(ord("A") + i)) for i, (e, legend) in enumerate(pairs)]


def rate(metric: str, matchers: str = "", *, by: str = "", sel: str = SEL) -> str:
    """sum [by (...)] (rate(metric{namespace, job[, matchers]}[$__rate_interval])); `sel`
    picks the scrape job (WORKER_SEL for the bulk-job workers)."""
    selector = f"{sel}, {matchers}" if matchers else sel
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({metric}{{{selector}}}[{RATE}]))"


def graph(
    title: str,
    description: str,
    targets: list[Query],
    *,
    unit: str = "short",
    width: int = 12,
    no_value: str | None = None,
) -> timeseries.Panel:
    """Lines over time; the tooltip lists every series, largest first, to compare them."""
    legend = (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
    )
    tooltip = (
        common_builders.VizTooltipOptions()
        .mode(common.TooltipDisplayMode.MULTI)
        .sort(common.SortOrder.DESCENDING)
    )
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets)
        .unit(unit)
        .legend(legend)
        .tooltip(tooltip)
        .fill_opacity(10)
        .span(width)
        .height(8)
    )
    return panel.no_value(no_value) if no_value else panel


def single(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str,
    red_above: float | None = None,
    legend: str = "",
) -> stat.Panel:
    """The latest value (one per series, named by `legend`); red above the threshold of the
    alert that watches it, if any."""
    steps = [models.Threshold(value=None, color="green")]
    if red_above is not None:
        steps.append(models.Threshold(value=red_above, color="red"))
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend))
        .unit(unit)
        .thresholds(db.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(steps))
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .span(4)
        .height(4)
    )


def distribution(title: str, description: str, metric: str, *, unit: str) -> heatmap.Panel:
    """A histogram's own buckets over time, as Prometheus stored them (no re-bucketing)."""
    target = query(f"sum by (le) (increase({metric}_bucket{{{SEL}}}[{RATE}]))", "{{le}}")
    # Grafana's own defaults; the SDK's zeros would give a one-colour scale.
    colors = (
        heatmap.HeatmapColorOptions()
        .mode(HeatmapColorMode.SCHEME)
        .scheme("Oranges")
        .fill("dark-orange")
        .exponent(0.5)
        .steps(64)
    )
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(target.format(PromQueryFormat.HEATMAP))
        .calculate(False)
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .color(colors)
        .span(8)
        .height(8)
    )


def bars(title: str, description: str, expr: str, legend: str, *, unit: str) -> bargauge.Panel:
    """One bar per series at the end of the range, longest first when the query sorts them:
    for a breakdown (per class, per outcome) that a graph's lines would tangle."""
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend).instant())
        .unit(unit)
        .min(0)
        .thresholds(
            db.ThresholdsConfig()
            .mode(models.ThresholdsMode.ABSOLUTE)
            .steps([models.Threshold(value=None, color="blue")])
        )
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .orientation(common.VizOrientation.HORIZONTAL)
        .value_mode(common.BarGaugeValueMode.TEXT)
        .show_unfilled(True)
        .span(12)
        .height(8)
    )
