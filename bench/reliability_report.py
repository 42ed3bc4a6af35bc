"""The fault suite's summary: bench/results/reliability.json and its section of RESULTS.md.

`make test-reliability` records one entry per scenario as it finishes; the section
"## Reliability under faults" of bench/RESULTS.md is rewritten in place each time, leaving
the other sections (written by `python -m bench`) as they are. `bench/report.py` renders the
same section from the JSON, so a benchmark run keeps it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RELIABILITY_JSON = RESULTS_DIR / "reliability.json"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Reliability under faults"


@dataclass
class ScenarioResult:
    """What one scenario did and saw. Times in seconds; `None` when not applicable."""

    scenario: str
    fault: str
    requests_sent: int
    failed_during_fault: int
    failed_after_healing: int
    recovery_s: float | None
    rows_checked: int
    rows_lost: int
    details: dict[str, Any] = field(default_factory=dict)
    unmet: list[str] = field(default_factory=list)  # the scenario's goals it missed


def load() -> dict[str, Any]:
    if not RELIABILITY_JSON.exists():
        return {"scenarios": {}}
    data: dict[str, Any] = json.loads(RELIABILITY_JSON.read_text())
    data.setdefault("scenarios", {})
    return data


def record(result: ScenarioResult, checks: dict[str, bool] | None = None) -> list[str]:
    """Add or replace one scenario's entry, then rewrite the RESULTS.md section.

    `checks`: the scenario's goals, named, and whether each was met; the ones missed are
    recorded (and shown) with the figures, and returned so the test can fail on them.
    """
    result.unmet = [name for name, met in (checks or {}).items() if not met]
    data = load()
    entry = asdict(result)
    entry["recorded_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    data["scenarios"][result.scenario] = entry
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    RELIABILITY_JSON.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    write_section(render(data))
    return result.unmet


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def render(data: dict[str, Any] | None = None) -> list[str]:
    """The section's lines (empty when no scenario was recorded yet)."""
    scenarios = (data or load())["scenarios"]
    if not scenarios:
        return []
    lines = [
        HEADING,
        "",
        "Written by `make test-reliability` (tests/reliability): every fault injected for "
        "real against a PostgreSQL the suite owns; the server is a real `amelia serve` "
        "process (in this process, behind httpx's ASGI transport, for cancellations, bad "
        "input and round trips). *Failed during fault*: requests that did not succeed while "
        "the fault lasted (for cancellations: those cut off). *Failed after healing*: "
        "failures among the requests sent in a row once it was over (must be 0). "
        "*Recovery*: from the end of the fault to the first successful request. *Rows "
        "checked*: acknowledged writes, events, usage rows and checkpoints looked up "
        "afterwards (for bad input: tables fingerprinted before and after).",
        "",
        "| Scenario | Fault | Requests sent | Failed during fault | Failed after healing "
        "| Recovery | Rows checked | Rows lost | Goals |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in sorted(scenarios):
        s = scenarios[name]
        lines.append(
            f"| `{name}` | {s['fault']} | {s['requests_sent']} | {s['failed_during_fault']} | "
            f"{s['failed_after_healing']} | {_seconds(s['recovery_s'])} | "
            f"{s['rows_checked']} | {s['rows_lost']} | "
            f"{'**missed**: ' + '; '.join(s['unmet']) if s.get('unmet') else 'met'} |"
        )
    notes = [
        f"- `{name}`: " + ", ".join(f"{k} {v}" for k, v in scenarios[name]["details"].items())
        for name in sorted(scenarios)
        if scenarios[name]["details"]
    ]
    if notes:
        lines += ["", *notes]
    return [*lines, ""]


def replace_section(markdown: str, section: list[str]) -> str:
    """`markdown` with the reliability section replaced (or appended), the rest untouched."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == HEADING), None)
    if start is None:
        kept_before, kept_after = lines, []
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        kept_before, kept_after = lines[:start], lines[end:]
    while kept_before and not kept_before[-1].strip():
        kept_before.pop()
    parts = [*kept_before, "", *section] if kept_before else list(section)
    if kept_after:
        parts += kept_after
    return "\n".join(parts).rstrip() + "\n"


def write_section(section: list[str]) -> None:
    current = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    RESULTS_MD.write_text(replace_section(current, section))
