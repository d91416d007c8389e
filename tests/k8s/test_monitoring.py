"""The Prometheus rules and the Grafana dashboard: valid, unit-tested, and in step with the code.

Everything runs offline. promtool (Debian package `prometheus`) checks and unit-tests the
rules, and parses every dashboard query; the dashboard's JSON schema catches a typo'd key
that Grafana would silently ignore. Each check is also shown failing on a broken copy, so a
check that stopped checking would not pass unnoticed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "imageiq" / "files" / "prometheus" / "rules.yaml"
RULE_TESTS = sorted((ROOT / "monitoring" / "tests").glob("*_test.yaml"))
RULE_TEST = ROOT / "monitoring" / "tests" / "rules_test.yaml"
DASHBOARD = ROOT / "helm" / "imageiq" / "files" / "dashboards" / "imageiq.json"
SCHEMA = ROOT / "monitoring" / "schema" / "dashboard.schema.json"
GENERATOR = ROOT / "monitoring" / "dashboards.py"
METRICS = ROOT / "imageiq" / "metrics.py"

# What Prometheus exposes for each kind of metric prometheus_client declares.
SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}
# An ImageIQ metric name, but not the middle part of a recording rule's name (level:metric:ops).
METRIC_REF = re.compile(r"(?<![\w:])imageiq_\w+(?![\w:])")
# Grafana's variables, replaced by something PromQL accepts: durations, then label values.
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")


@pytest.fixture(scope="session")
def promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install the Debian package `prometheus` "
            "(apt-get install prometheus), or set PROMTOOL to the binary."
        )
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' own panels included (a collapsed row holds them)."""
    for panel in model["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(model: dict[str, Any]) -> dict[str, str]:
    """'panel <id> <title> <refId>' -> PromQL expression, for every query of every panel."""
    named = [
        (f"panel {panel['id']} {panel['title']} {target['refId']}", target["expr"])
        for panel in panels(model)
        for target in panel.get("targets", [])
    ]
    queries = dict(named)
    assert len(queries) == len(named), "two queries with the same panel id and refId"
    return queries


def record_name(query_name: str) -> str:
    return "dashboard:" + re.sub(r"\W+", "_", query_name.lower()).strip("_")


def check_promql(
    promtool: str, tmp_path: Path, exprs: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """promtool parses each expression as a recording rule named after its panel.

    A failure names the rule (`dashboard:panel_20_mean_confidence_b`, say: panel id, title
    and refId), so the broken query is found at once.
    """
    entries = []
    for name, expr in exprs.items():
        for variable, value in GRAFANA_DURATIONS.items():
            expr = expr.replace(variable, value)
        expr = GRAFANA_VARIABLE.sub("x", expr)
        record = record_name(name)
        entries.append(
            f"      # {name}\n      - record: {record}\n        expr: {json.dumps(expr)}\n"
        )
    path = tmp_path / "dashboard_queries.yaml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(entries))
    return run(promtool, "check", "rules", path)


def declared_metrics(source: str) -> set[str]:
    """The series names imageiq/metrics.py makes Prometheus expose."""
    declared = re.findall(r'pc\.(Counter|Gauge|Histogram)\(\s*"(\w+)"', source)
    return {name + suffix for kind, name in declared for suffix in SUFFIXES[kind]}


def unknown_metrics(exprs: list[str], known: set[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC_REF.findall(expr)} - known


def all_exprs() -> list[str]:
    return [r["expr"] for r in rules()] + list(dashboard_queries(dashboard()).values())


# --- Prometheus rules ---------------------------------------------------------------------


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, "no monitoring/tests/*_test.yaml"
    result = run(promtool, "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_rejects_a_syntax_error(promtool: str, tmp_path: Path) -> None:
    text = RULES.read_text()
    good = "sum by (namespace, job) (rate(imageiq_requests_total[5m]))"
    assert good in text
    broken = tmp_path / "rules.yaml"
    broken.write_text(text.replace(good, good[:-1], 1))
    result = run(promtool, "check", "rules", broken)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda t: t["promql_expr_test"][0]["exp_samples"][0].update(value=41),
            id="wrong recorded value",
        ),
        pytest.param(
            lambda t: t["alert_rule_test"][0].update(
                exp_alerts=[
                    {"exp_labels": {"severity": "critical", "namespace": "ml", "job": "imageiq"}}
                ]
            ),
            id="alert expected where none fires",
        ),
    ],
)
def test_unit_tests_catch_a_wrong_expectation(
    promtool: str, tmp_path: Path, mutate: Callable[[dict[str, Any]], None]
) -> None:
    suite = yaml.safe_load(RULE_TEST.read_text())
    suite["rule_files"] = [str(RULES)]
    mutate(suite["tests"][0])
    broken = tmp_path / "rules_test.yaml"
    broken.write_text(yaml.safe_dump(suite))
    result = run(promtool, "test", "rules", broken)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    checks = [
        check
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for check in test.get("alert_rule_test", [])
    ]
    for alert in (r["alert"] for r in rules() if "alert" in r):
        outcomes = {bool(c.get("exp_alerts")) for c in checks if c["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert}: tested firing and quiet? {outcomes}"


def test_every_recording_rule_value_is_tested() -> None:
    exprs = " ".join(
        check["expr"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for check in test.get("promql_expr_test", [])
    )
    untested = {r["record"] for r in rules() if "record" in r and r["record"] not in exprs}
    assert not untested


def test_alerts_carry_severity_and_annotations() -> None:
    for rule in (r for r in rules() if "alert" in r):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, rule["alert"]
        # A full URL, which Alertmanager and Grafana can open: the chart's default runbook
        # page (prometheusRule.runbookUrl, which the PrometheusRule swaps in) and the
        # alert's section of docs/operations.md.
        page = yaml.safe_load((ROOT / "helm/imageiq/values.yaml").read_text())["prometheusRule"]
        assert page["runbookUrl"].endswith("/docs/operations.md")
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"] == f"{page['runbookUrl']}#{anchor}"
        assert f"## {rule['alert']}\n" in (ROOT / "docs/operations.md").read_text()


# --- Grafana dashboard --------------------------------------------------------------------


def test_committed_dashboard_is_generated() -> None:
    result = run(sys.executable, GENERATOR, "--check")
    assert result.returncode == 0, result.stderr


def test_check_reports_a_stale_dashboard(tmp_path: Path) -> None:
    stale = tmp_path / "imageiq.json"
    stale.write_text(DASHBOARD.read_text().replace('"ImageIQ"', '"ImageIQ (edited)"'))
    result = run(sys.executable, GENERATOR, "--check", "--output", stale)
    assert result.returncode == 1
    assert "out of date" in result.stderr
    assert "(edited)" in result.stderr  # the diff


def test_dashboard_matches_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(dashboard())]
    assert not errors


def _panel(model: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in model["panels"] if p["type"] == "timeseries")


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d.update(titel=d.pop("title")), id="typo in a dashboard key"),
        pytest.param(lambda d: _panel(d).update(descripton="x"), id="typo in a panel key"),
        pytest.param(
            lambda d: _panel(d)["targets"][0].update(legend="x"), id="typo in a target key"
        ),
        pytest.param(lambda d: _panel(d)["gridPos"].update(w=30), id="gridPos w=30"),
        pytest.param(lambda d: _panel(d)["gridPos"].update(x=20, w=8), id="gridPos x+w>24"),
        pytest.param(lambda d: d.update(schemaVersion="41"), id="string for an integer"),
        pytest.param(lambda d: _panel(d).update(id="9"), id="string panel id"),
        pytest.param(lambda d: _panel(d).pop("targets"), id="panel without targets"),
        pytest.param(lambda d: _panel(d).update(targets=[]), id="panel with no target"),
        pytest.param(lambda d: _panel(d).update(type="graph"), id="panel type we do not use"),
        pytest.param(
            lambda d: _panel(d)["datasource"].update(uid="P1809F7CD0C75ACF3"),
            id="fixed data source uid",
        ),
        pytest.param(lambda d: d["templating"]["list"].pop(), id="variable missing"),
    ],
)
def test_schema_rejects_a_broken_dashboard(mutate: Callable[[dict[str, Any]], None]) -> None:
    broken = copy.deepcopy(dashboard())
    mutate(broken)
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors(broken))


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard())
    assert len(queries) > 20
    result = check_promql(promtool, tmp_path, queries)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_dashboard_query_is_caught(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard())
    name = next(n for n in queries if n.endswith(" Mean confidence B"))
    queries[name] = "sum(" + queries[name]  # an unclosed parenthesis
    result = check_promql(promtool, tmp_path, queries)
    assert result.returncode != 0
    assert f'"{record_name(name)}": could not parse' in result.stdout + result.stderr


# --- Metric names -------------------------------------------------------------------------


def test_referenced_metrics_are_declared() -> None:
    known = declared_metrics(METRICS.read_text())
    assert "imageiq_requests_total" in known and "imageiq_request_seconds_bucket" in known
    assert not unknown_metrics(all_exprs(), known)


def test_a_renamed_metric_is_caught() -> None:
    renamed = METRICS.read_text().replace('"imageiq_records_pending"', '"imageiq_records_queued"')
    assert unknown_metrics(all_exprs(), declared_metrics(renamed)) == {"imageiq_records_pending"}


# --- The closed loop ----------------------------------------------------------------------

CLOSED_LOOP_METRICS = {
    "imageiq_labelled_images",
    "imageiq_retrain_runs",
    "imageiq_retrain_last_run_timestamp_seconds",
    "imageiq_canary_share",
    "imageiq_canary_agreement",
    "imageiq_canary_rollbacks_total",
    "imageiq_requests_total",
    "imageiq_prediction_confidence_sum",
    "imageiq_prediction_confidence_count",
    "imageiq_inference_seconds_bucket",
}


def closed_loop_row(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels under the "Closed loop" row (up to the next row)."""
    rows = [i for i, p in enumerate(model["panels"]) if p["type"] == "row"]
    (start,) = [i for i in rows if model["panels"][i]["title"] == "Closed loop"]
    end = next((i for i in rows if i > start), len(model["panels"]))
    return model["panels"][start + 1 : end]


def test_the_closed_loop_row_shows_every_closed_loop_metric() -> None:
    row = closed_loop_row(dashboard())
    exprs = [t["expr"] for p in row for t in p["targets"]]
    assert {name for expr in exprs for name in METRIC_REF.findall(expr)} == CLOSED_LOOP_METRICS
    titles = {p["title"]: p for p in row}
    # Labelled images per class: one bar per class, replicas' copies merged by max.
    bars = titles["Labelled images per class"]
    assert bars["type"] == "bargauge"
    assert "max by (label) (imageiq_labelled_images" in bars["targets"][0]["expr"]
    # The database's gauges are read with max across replicas, never summed.
    for expr in exprs:
        for gauge in ("imageiq_labelled_images", "imageiq_retrain", "imageiq_canary_share"):
            if gauge in expr:
                assert "sum" not in expr.split(gauge)[0][-20:], expr
    # The side-by-side panels keep the versions in a canary (those with an agreement).
    for title in ("Canary error ratio", "Canary mean confidence", "Canary p95 inference latency"):
        (target,) = titles[title]["targets"]
        assert "imageiq_canary_agreement" in target["expr"], title
    assert titles["Canary p95 inference latency"]["targets"][0]["expr"].startswith(
        "histogram_quantile(0.95"
    )


def exprs_by(kind: str) -> dict[str, str]:
    """Alert or record name -> its expressions (a name may have several rules), joined."""
    joined: dict[str, str] = {}
    for rule in rules():
        if kind in rule:
            joined[rule[kind]] = joined.get(rule[kind], "") + rule["expr"]
    return joined


def test_closed_loop_alerts_read_the_closed_loop_metrics() -> None:
    by_alert, records = exprs_by("alert"), exprs_by("record")
    failed = by_alert["ImageIQRetrainFailed"]
    assert "namespace_job_outcome:imageiq_retrain_last_run_timestamp_seconds:max" in failed
    assert "namespace_cronjob_condition:kube_job_status_start_time:max" in failed
    assert "imageiq_retrain_last_run_timestamp_seconds" in " ".join(records.values())
    assert (
        "kube_job_failed" in records["namespace_cronjob_condition:kube_job_status_start_time:max"]
    )
    assert "imageiq_canary_rollbacks_total" in by_alert["ImageIQCanaryRolledBack"]
    assert (
        "namespace_job:imageiq_retrain_schedule_period_seconds:max"
        in by_alert["ImageIQRetrainStale"]
    )
    # The CronJob's Jobs, as the chart names them, are what the Kubernetes rule selects.
    job_regex = re.search(r'job_name=~"([^"]+)"', " ".join(records.values()))
    assert job_regex and re.fullmatch(job_regex.group(1), "imageiq-retrain-29012345")
    assert not re.fullmatch(job_regex.group(1), "backup-retrain-29012345")


def test_schema_rejects_a_broken_bar_gauge() -> None:
    broken = copy.deepcopy(dashboard())
    bars = next(p for p in panels(broken) if p["type"] == "bargauge")
    bars["options"]["dispalyMode"] = "basic"
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors(broken))
