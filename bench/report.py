"""Render bench/RESULTS.md from bench/results/latest.json."""

from __future__ import annotations

from typing import Any

from bench.common import RESULTS_MD, load_results

GOALS = {
    "simple_pooled": "geometric mean below the old layer's 2.08x with a checkout per call",
    "simple_held": "below 1.6x on a held connection; 1.3x per call is the stretch",
    "usage": "three usage queries for 90 days under 150 ms together at 1M rows",
    "list": "a page under 2 ms; 2,000 pages deep within 1.5x of page 1",
}


def _repositories(section: dict[str, Any]) -> list[str]:
    lines = [
        "## Repositories vs raw asyncpg",
        "",
        f"PostgreSQL {section['server_version']}, {section['iterations']} sequential calls each, "
        "database seeded with 100,000 workflows, 1,000,000 token-usage rows, 200,000 events.",
        "`pooled`: one pooled checkout per call; `held`: the repository bound to a held "
        "connection; `raw`: the same question as one statement on one asyncpg connection.",
        "",
        "| Call | raw median | pooled median | held median | pooled p99 | held p99 "
        "| ratio pooled | ratio held |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, call in section["calls"].items():
        lines.append(
            f"| `{name}` | {call['raw']['median_us']:.0f} us | "
            f"{call['pooled']['median_us']:.0f} us | {call['held']['median_us']:.0f} us | "
            f"{call['pooled']['p99_us']:.0f} us | {call['held']['p99_us']:.0f} us | "
            f"{call['ratio_pooled']:.2f} | {call['ratio_held']:.2f} |"
        )
    usage = section["usage_90d"]
    extra = usage["extra"]
    lines += [
        "",
        f"- Geometric mean over the simple calls: **{section['geomean_ratio_pooled']:.2f}x** "
        f"pooled, **{section['geomean_ratio_held']:.2f}x** held "
        f"(goals: {GOALS['simple_pooled']}; {GOALS['simple_held']}).",
        f"- Usage summary + trend + by-model, 90 days: **{usage['median_us'] / 1000:.1f} ms** "
        f"median, p99 {usage['p99_us'] / 1000:.1f} ms (summary "
        f"{extra['summary_median_ms']:.1f} ms, trend {extra['trend_median_ms']:.1f} ms, "
        f"by-model {extra['by_model_median_ms']:.1f} ms; goal: {GOALS['usage']}).",
        f"- `list_workflows` 2,000 pages deep / page 1: "
        f"**{section['list_deep_vs_first_page']:.2f}x** (goal: {GOALS['list']}).",
        "",
    ]
    return lines


# Each suite's section, by the start of its heading: a suite not run this time (latest.json
# lives on the machine that ran it, not in git) keeps its section from the current file.
SECTION_HEADINGS = {
    "repositories": "## Repositories vs raw asyncpg",
    "checkpoints": "## Checkpoints:",
    "checkpoint_growth": "## Checkpoint size",
    "api": "## HTTP API under load",
    "cluster": "## Several processes",
}


def _existing_sections() -> dict[str, list[str]]:
    """The current file's sections by suite (heading line to the line before the next)."""
    if not RESULTS_MD.exists():
        return {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in RESULTS_MD.read_text().splitlines():
        if line.startswith("## "):
            suite = next((k for k, h in SECTION_HEADINGS.items() if line.startswith(h)), None)
            current = sections.setdefault(suite, []) if suite else None
        if current is not None:
            current.append(line)
    return sections


def _render_suite(suite: str, section: dict[str, Any]) -> list[str]:
    if suite == "repositories":
        return _repositories(section)
    if suite == "checkpoints":
        from bench import checkpoints

        return checkpoints.render(section)
    if suite == "checkpoint_growth":
        from bench import checkpoint_growth

        return checkpoint_growth.render(section)
    if suite == "api":
        from bench import api

        return api.render(section)
    from bench import cluster

    return cluster.render(section)


def render() -> str:
    results = load_results()
    kept = _existing_sections()
    lines = ["# Benchmark results", ""]
    facts = results.get("machine", {})
    if facts:
        lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".")
        if any(suite not in results and suite in kept for suite in SECTION_HEADINGS):
            lines.append(
                "Sections of suites not run then are kept from earlier runs (see git log)."
            )
        lines.append("")
    if "seed" in results:
        seed = results["seed"]
        lines.append(
            "Seeding: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in seed.items())
        )
        lines.append("")
    elif RESULTS_MD.exists():
        old = [line for line in RESULTS_MD.read_text().splitlines() if line.startswith("Seeding:")]
        lines += [*old[:1], ""] if old else []
    for suite in SECTION_HEADINGS:
        if suite in results:
            lines += _render_suite(suite, results[suite])
        elif suite in kept:
            lines += [*kept[suite]]
            if lines[-1] != "":
                lines.append("")
    from bench import reliability_report

    # Written by `make test-reliability`; kept when the benchmarks rewrite this file.
    lines += reliability_report.render()
    return "\n".join(lines).rstrip() + "\n"


def write() -> None:
    RESULTS_MD.write_text(render())
