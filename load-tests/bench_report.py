"""The benchmark's verdicts and report: the targets of docs/performance.md checked against one
run's numbers, a Markdown report and a plot. Pure functions of ``bench.py``'s results."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
# Two measurements of the same code path on this shared machine differ by this much; "never
# slower" is read as "not slower by more than the noise".
NOISE = 0.05


def _served(results: dict[str, Any], model: str, batching: bool) -> dict[str, dict[str, Any]]:
    for entry in results["served"]:
        if entry["model"] == model and entry["batching"] == batching:
            return {p["name"]: p["result"] for p in entry["phases"]}
    return {}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target (issues 7 and 17) with what this run measured and whether it holds."""
    out: list[dict[str, Any]] = []

    def check(target: str, measured: str, ok: bool) -> None:
        out.append({"target": target, "measured": measured, "ok": bool(ok)})

    ceiling = results["ceiling"]
    for model in ("resnet50", "resnet50 int8"):
        on = _served(results, model, True)
        if model in ceiling and "c=16" in on:
            best = ceiling[model]["best_img_s"]
            ratio = on["c=16"]["img_s"] / best
            check(
                f"{model}: served at c=16 >= 0.85x the in-process ceiling",
                f"{on['c=16']['img_s']} / {best} img/s (batch {ceiling[model]['best_batch']}) "
                f"= {ratio:.2f}x",
                ratio >= 0.85,
            )
    int8 = _served(results, "resnet50 int8", True)
    if "c=16" in int8:
        metrics = results["models"]["resnet50 int8"]["metrics"]
        drop = (metrics.get("fp32_top1", 0) - metrics.get("int8_top1", 0)) * 100
        img_s = int8["c=16"]["img_s"]
        check(
            "resnet50 int8: >= 150 img/s served at c=16, top-1 within 1 point of fp32",
            f"{img_s} img/s; top-1 {metrics.get('int8_top1', 0):.2%} vs fp32 "
            f"{metrics.get('fp32_top1', 0):.2%} ({drop:+.2f} points lost)",
            img_s >= 150 and drop <= 1.0,
        )
    fp = _served(results, "resnet50", True)
    if "c=16" in fp:
        check(
            "resnet50 without int8: >= 95 img/s served at c=16",
            f"{fp['c=16']['img_s']} img/s",
            fp["c=16"]["img_s"] >= 95,
        )
    for model, row in ceiling.items():
        on = _served(results, model, True)
        if "c=1" in on:
            ratio = on["c=1"]["p50_ms"] / row["batch1_latency_ms"]
            check(
                f"{model}: p50 at c=1 <= 1.25x the in-process batch-1 latency",
                f"{on['c=1']['p50_ms']} / {row['batch1_latency_ms']} ms = {ratio:.2f}x",
                ratio <= 1.25,
            )
    for model in ceiling:
        on, off = _served(results, model, True), _served(results, model, False)
        shared = [name for name in on if name in off]
        if shared:
            ratios = {name: on[name]["img_s"] / off[name]["img_s"] for name in shared}
            worst = min(ratios, key=lambda n: ratios[n])
            check(
                f"{model}: batching on never slower than off (within {NOISE:.0%} noise)",
                "on/off img/s: " + ", ".join(f"{n} {r:.2f}" for n, r in ratios.items()),
                ratios[worst] >= 1 - NOISE,
            )
    cache = fp.get("cache hit, c=1")
    if cache:
        check("cache hit p50 <= 5 ms", f"{cache['p50_ms']} ms", cache["p50_ms"] <= 5)
    large = fp.get("large 4000x3000, c=1")
    if large and "c=1" in fp:
        ratio = large["p50_ms"] / fp["c=1"]["p50_ms"]
        check(
            "a 4000x3000 JPEG costs <= 1.5x a 224x224 JPEG end to end (p50, c=1)",
            f"{large['p50_ms']} / {fp['c=1']['p50_ms']} ms = {ratio:.2f}x",
            ratio <= 1.5,
        )
    front = {p["name"]: p["result"] for p in results.get("frontend", {}).get("phases", [])}
    skipped = front.get("forward skipped, c=16")
    if skipped:
        core_ms = skipped["server_core_ms_per_img"]
        check(
            "server CPU outside the model <= 1.5 core-ms per 224x224 JPEG request (c=16)",
            f"{core_ms} core-ms (forward skipped; {skipped['img_s']} requests/s)",
            core_ms <= 1.5,
        )
    scaling = results.get("front_scaling", {})
    if "two_vs_one" in scaling:
        rows = {r["layout"]: r for r in scaling["rows"]}
        fronts = [r for r in scaling["rows"] if "model process" in r["layout"]]
        check(
            "front-end capacity with 2 front processes >= 1.8x one (forward skipped)",
            f"{fronts[1]['req_per_s']} / {fronts[0]['req_per_s']} requests/s "
            f"= {scaling['two_vs_one']:.2f}x (one process alone: "
            f"{rows['single process']['req_per_s']})",
            scaling["two_vs_one"] >= 1.8,
        )
    every = [p for e in results["served"] for p in e["phases"]]
    every += results.get("frontend", {}).get("phases", [])
    every += [p for phases in results.get("layouts", {}).values() for p in phases]
    requests = sum(p["result"]["requests"] for p in every)
    bad = sum(p["result"]["non_2xx"] for p in every)
    for r in scaling.get("rows", []):
        requests += r["requests"]
        bad += r["failed"]
    check("zero non-2xx responses to valid requests", f"{bad} of {requests}", bad == 0)
    return out


def markdown(results: dict[str, Any], *, plot: str) -> str:
    m = results["machine"]
    lines = [
        f"Measured {results['date']} by `make bench` in {results['elapsed_s']} s on "
        f"{m['cpu']}, {m['cores']} cores"
        + (", AVX512-BF16" if m["avx512_bf16"] else "")
        + (", AMX" if m["amx"] else "")
        + f", {m['memory_gib']} GiB, "
        + (f"GPU {m['gpu']}" if m["gpu"] else "no GPU")
        + f"; Python {m['python']}, torch {m['torch']}. Service defaults: "
        + ", ".join(f"`{k}={v}`" for k, v in results["settings"].items())
        + f". {results['seconds_per_phase']:g} s per served phase; the load generator shares "
        "the machine with the server.",
        "",
        "### Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['ok'] else '**no**'} |")
    batches = list(next(iter(results["ceiling"].values()))["img_s"])
    lines += [
        "",
        "### In-process ceiling (images/s; the model alone, uint8 batch in, probabilities out)",
        "",
        "| model | runtime | "
        + " | ".join(f"batch {b}" for b in batches)
        + " | batch-1 latency ms |",
        "|---|---|" + "---:|" * (len(batches) + 1),
    ]
    for name, row in results["ceiling"].items():
        cells = [
            f"**{v}**" if int(b) == row["best_batch"] else str(v) for b, v in row["img_s"].items()
        ]
        lines.append(
            f"| {name} | {row['runtime']} | {' | '.join(cells)} | {row['batch1_latency_ms']} |"
        )
    lines += [
        "",
        "### Served (`POST /v1/classify`, one distinct 224x224 JPEG per request, with an API key)",
        "",
        "| model | batching | phase | images/s | / ceiling | p50 ms | p95 ms | p99 ms | non-2xx "
        "| server core-ms/img |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in results["served"]:
        best = results["ceiling"][entry["model"]]["best_img_s"]
        for p in entry["phases"]:
            r = p["result"]
            lines.append(
                f"| {entry['model']} | {'on' if entry['batching'] else 'off'} | {p['name']} | "
                f"{r['img_s']} | {r['img_s'] / best:.2f} | {r['p50_ms']} | {r['p95_ms']} | "
                f"{r['p99_ms']} | {r['non_2xx']} | {r.get('server_core_ms_per_img', '-')} |"
            )
    frontend = results.get("frontend")
    if frontend:
        lines += [
            "",
            "### Front-end capacity (the forward pass skipped: load-tests/frontend_service.py)",
            "",
            "| front processes | phase | requests/s | p50 ms | p99 ms | server core-ms/request "
            "| non-2xx |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for p in frontend["phases"]:
            r = p["result"]
            lines.append(
                f"| {frontend['front_processes']} | {p['name']} | {r['img_s']} | {r['p50_ms']} "
                f"| {r['p99_ms']} | {r['server_core_ms_per_img']} | {r['non_2xx']} |"
            )
    scaling = results.get("front_scaling", {})
    if scaling.get("skipped"):
        lines += ["", f"Front-process scaling not measured: {scaling['skipped']}."]
    elif scaling:
        lines += [
            "",
            f"### Front-process scaling (forward skipped; wrk, {scaling['clients']} connections, "
            "cache off)",
            "",
            "| layout | requests/s | p50 ms | p99 ms | server core-ms/request | failed |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in scaling["rows"]:
            lines.append(
                f"| {r['layout']} | {r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
                f"| {r['server_core_ms_per_request']} | {r['failed']} |"
            )
    layouts = results.get("layouts", {})
    if layouts:
        lines += [
            "",
            "### Process layouts, ResNet-50 served (forward pass and all)",
            "",
            "| layout | phase | img/s | p50 ms | p99 ms | server core-ms/img | non-2xx |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, phases in layouts.items():
            for p in phases:
                r = p["result"]
                lines.append(
                    f"| {name} | {p['name']} | {r['img_s']} | {r['p50_ms']} | {r['p99_ms']} "
                    f"| {r['server_core_ms_per_img']} | {r['non_2xx']} |"
                )
    lines += ["", f"![throughput and p99 against concurrency]({plot})"]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tput, p99) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, entry in enumerate(results["served"]):
        points = [
            (p["concurrency"], p["result"])
            for p in entry["phases"]
            if p["kind"] == "single" and p["name"].startswith("c=") and "after" not in p["name"]
        ]
        if not points:
            continue
        color = colors[i % len(colors)]
        style = "-" if entry["batching"] else "--"
        label = f"{entry['model']}, batching {'on' if entry['batching'] else 'off'}"
        xs = [c for c, _ in points]
        tput.plot(xs, [r["img_s"] for _, r in points], style, marker="o", color=color, label=label)
        p99.plot(xs, [r["p99_ms"] for _, r in points], style, marker="o", color=color, label=label)
        if entry["batching"]:
            best = results["ceiling"][entry["model"]]["best_img_s"]
            tput.axhline(best, color=color, linestyle=":", linewidth=1)
    tput.set(
        title="served throughput (dotted: in-process ceiling)",
        xlabel="concurrent clients",
        ylabel="images/s",
        xscale="log",
    )
    p99.set(title="p99 latency", xlabel="concurrent clients", ylabel="ms", xscale="log")
    p99.set_yscale("log")
    for ax in (tput, p99):
        ax.set_xticks(list({p["concurrency"] for e in results["served"] for p in e["phases"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
    tput.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_into(doc: Path, report: str, *, begin: str = BEGIN, end: str = END) -> None:
    """Replaces the generated part of ``doc`` (between the markers) with ``report``."""
    text = doc.read_text()
    block = f"{begin}\n{report}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
