"""Turning level results into the text report (the seed's table and details) and the JSON file."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .resources import ResourceSummary, summarize
from .runner import LevelResult, OpenLoad
from .samples import Sample
from .stats import Distribution, LevelStats, Window, level_stats, windows

SCHEMA = "stress-report/1"
NA = "n/a"
RAW_COLUMNS = (
    "scheduled_s",
    "sent_s",
    "first_byte_s",
    "done_s",
    "status",
    "error",
    "audio_s",
    "cache",
)


@dataclass(frozen=True)
class LevelReport:
    """One level's raw result with everything computed from it."""

    result: LevelResult
    stats: LevelStats
    resources: ResourceSummary
    windows: list[Window]


@dataclass(frozen=True)
class RunReport:
    """A whole run: what was asked, where it went, and each level's outcome."""

    scenario: str
    unit: str
    started_at: str  # ISO 8601, UTC
    target: dict[str, Any]
    settings: dict[str, Any]
    server: dict[str, Any]
    levels: list[LevelReport]

    @property
    def warnings(self) -> list[str]:
        return run_warnings(self)


def analyse(result: LevelResult, window_s: float) -> LevelReport:
    return LevelReport(
        result=result,
        stats=level_stats(result.samples, result.elapsed_s),
        resources=summarize(result.resources),
        windows=windows(result.samples, window_s, result.elapsed_s),
    )


def run_warnings(report: RunReport) -> list[str]:
    notes = []
    if not report.server["pids"]:
        notes.append("server process not found: CPU % and RSS are n/a (use --server-pid)")
    for level in report.levels:
        label = level.result.load.label
        if level.resources.client_saturated:
            notes.append(
                f"{label}: the client used ~one full core; numbers may be the client's limit"
            )
        if level.stats.requests and level.stats.successes == 0:
            kinds = ", ".join(level.stats.errors)
            notes.append(f"{label}: every request failed ({kinds}); check --url, --voice, --token")
    return notes


# ---- text ---------------------------------------------------------------------------------


def render(report: RunReport, show_windows: bool = False) -> str:
    """The report printed at the end: seed-shaped summary, details, errors, windows, warnings."""
    parts = [
        f"Scenario {report.scenario}: {report.target['url']}",
        table(summary_rows(report), title=None),
        table(detail_rows(report), title="Details"),
    ]
    errors = error_lines(report)
    if errors:
        parts.append("Errors\n" + "\n".join(errors))
    if show_windows:
        parts.append(
            table(
                window_rows(report), title=f"Over time ({report.settings['window_s']:g} s windows)"
            )
        )
    if report.warnings:
        parts.append("Warnings\n" + "\n".join(f"  ! {note}" for note in report.warnings))
    return "\n\n".join(parts) + "\n"


def summary_rows(report: RunReport) -> list[list[str]]:
    """The seed's table: load, successful QPS, P95 latency, error %, server CPU %."""
    rows = [[report.unit, "QPS", "P95 ms", "Error %", "CPU %"]]
    for level in report.levels:
        stats = level.stats
        rows.append(
            [
                f"{level.result.load.value:g}",
                f"{stats.qps:.1f}",
                _ms(stats.latency, "p95_ms"),
                f"{100.0 * stats.error_rate:.1f}",
                _number(level.resources.server_cpu_mean, "{:.0f}"),
            ]
        )
    return rows


def detail_rows(report: RunReport) -> list[list[str]]:
    rows = [
        [
            report.unit,
            "Requests",
            "OK",
            "Sent/s",
            "P50 ms",
            "P99 ms",
            "Max ms",
            "TTFB p50 ms",
            "Audio s/s",
            "Client CPU %",
            "Server RSS MB",
            "Cache hit",
        ]
    ]
    for level in report.levels:
        stats, resources = level.stats, level.resources
        rss = resources.server_rss_max_bytes
        rows.append(
            [
                f"{level.result.load.value:g}",
                str(stats.requests),
                str(stats.successes),
                _number(stats.send_rate, "{:.1f}"),
                _ms(stats.latency, "p50_ms"),
                _ms(stats.latency, "p99_ms"),
                _ms(stats.latency, "max_ms"),
                _ms(stats.ttfb, "p50_ms"),
                f"{stats.audio_per_second:.2f}",
                _number(resources.client_cpu_mean, "{:.0f}"),
                _number(None if rss is None else rss / 2**20, "{:.0f}"),
                _percent(stats.cache.hit_rate),
            ]
        )
    return rows


def window_rows(report: RunReport) -> list[list[str]]:
    """The seed's cache table: time window, total requests, cache hits, hit rate."""
    rows = [[report.unit, "Window", "Requests", "Cache hits", "Hit rate", "QPS", "P95 ms"]]
    for level in report.levels:
        for window in level.windows:
            rows.append(
                [
                    f"{level.result.load.value:g}",
                    f"{_seconds(window.start_s)}-{_seconds(window.end_s)} s",
                    str(window.requests),
                    str(window.cache.hits) if window.cache.with_header else NA,
                    _percent(window.cache.hit_rate),
                    f"{window.qps:.1f}",
                    _ms(window.latency, "p95_ms"),
                ]
            )
    return rows


def error_lines(report: RunReport) -> list[str]:
    lines = []
    for level in report.levels:
        total = level.stats.requests
        for kind, count in level.stats.errors.items():
            lines.append(
                f"  {level.result.load.label}: {kind} {count} ({100.0 * count / total:.1f}%)"
            )
    return lines


def table(rows: Sequence[Sequence[str]], title: str | None) -> str:
    """Right-aligned columns, the first row as header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(([title] if title else []) + lines)


def _ms(distribution: Distribution | None, field_name: str) -> str:
    return NA if distribution is None else f"{getattr(distribution, field_name):.1f}"


def _seconds(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _number(value: float | None, pattern: str) -> str:
    return NA if value is None else pattern.format(value)


def _percent(rate: float | None) -> str:
    return NA if rate is None else f"{100.0 * rate:.1f}%"


# ---- JSON ---------------------------------------------------------------------------------


def to_json(report: RunReport, raw: bool = True) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "scenario": report.scenario,
        "unit": report.unit,
        "started_at": report.started_at,
        "target": report.target,
        "settings": report.settings,
        "server": report.server,
        "levels": [level_json(level, raw) for level in report.levels],
        "warnings": report.warnings,
    }


def level_json(level: LevelReport, raw: bool) -> dict[str, Any]:
    result, stats = level.result, level.stats
    document = {
        "label": result.load.label,
        "value": result.load.value,
        "open_loop": isinstance(result.load, OpenLoad),
        "connections": result.load.connections,
        "started_s": result.started_s,
        "stopped_by": result.stopped_by,
        **_stats_json(stats),
        "resources": {
            **dataclasses.asdict(level.resources),
            "samples": [dataclasses.asdict(sample) for sample in result.resources],
        },
        "windows": [_window_json(window) for window in level.windows],
    }
    if raw:
        document["raw"] = {
            "columns": list(RAW_COLUMNS),
            "rows": [_raw_row(s) for s in result.samples],
        }
    return document


def _stats_json(stats: LevelStats) -> dict[str, Any]:
    document = dataclasses.asdict(stats)
    document["cache"] = _cache_json(stats)
    return document


def _cache_json(stats: LevelStats | Window) -> dict[str, Any]:
    cache = stats.cache
    return {**dataclasses.asdict(cache), "hit_rate": cache.hit_rate}


def _window_json(window: Window) -> dict[str, Any]:
    document = dataclasses.asdict(window)
    document["cache"] = _cache_json(window)
    return document


def _raw_row(sample: Sample) -> list[Any]:
    return [_microseconds(getattr(sample, column)) for column in RAW_COLUMNS]


def _microseconds(value: Any) -> Any:
    """Times to 1 µs: the clock's real resolution here, and a much smaller file."""
    return round(value, 6) if isinstance(value, float) else value


def write_json(report: RunReport, path: Path, raw: bool = True) -> None:
    path.write_text(
        json.dumps(to_json(report, raw), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
