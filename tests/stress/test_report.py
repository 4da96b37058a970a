"""The text report and the JSON document: documented fields, n/a cases, warnings."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stress import report
from stress.resources import ResourceSample
from stress.runner import ClosedLoad, LevelResult, OpenLoad, ThinkTime
from stress.samples import Sample

README = Path(__file__).resolve().parents[2] / "stress" / "README.md"
# Keys chosen by the data (error kinds, X-Cache values, request fields), not by the schema.
DATA_KEYED = {"errors", "counts", "body"}


def sample(done_s: float, error: str | None = None, cache: str | None = None) -> Sample:
    status = 200 if error is None else 500
    return Sample(done_s - 0.1, done_s - 0.1, done_s - 0.05, done_s, status, error, 1.0, cache)


def make_report(cache: str | None = None, server_pids: list[int] | None = None) -> report.RunReport:
    samples = [sample(0.1 * i, cache=cache) for i in range(1, 20)] + [sample(2.0, "http_500")]
    resources = [ResourceSample(1.0, 150.0, 300 * 2**20, 3, 20.0, 2**20, 80.0)]
    results = [
        LevelResult(ClosedLoad(50, ThinkTime(1.0, 3.0)), 0.0, 2.0, "time", samples, resources),
        LevelResult(OpenLoad(8.0), 2.5, 2.0, "max_requests", samples[:5], []),
    ]
    levels = [report.analyse(result, window_s=1.0) for result in results]
    pids = [1234] if server_pids is None else server_pids
    return report.RunReport(
        scenario="seed",
        unit="Users",
        started_at="2025-01-01T00:00:00+00:00",
        target={"url": "http://127.0.0.1:8080/api/tts", "token_set": True, "timeout_s": 60.0},
        settings={"duration_s": 2.0, "window_s": 1.0, "body": {"voice": "female"}},
        server={"pids": pids, "found_by": "port"},
        levels=levels,
    )


def table_lines(text: str, header_start: str) -> list[str]:
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.split()[:1] == [header_start] and "QPS" in line
    )
    return lines[start : start + 4]


def test_summary_table_has_the_seeds_columns_and_values() -> None:
    text = report.render(make_report())
    header, rule, first, second = table_lines(text, "Users")
    assert header.split() == ["Users", "QPS", "P95", "ms", "Error", "%", "CPU", "%"]
    assert set(rule.replace(" ", "")) == {"-"}
    # 19 of 20 succeeded in 2.0 s; every latency is 100 ms; one http_500; server at 150 %.
    assert first.split() == ["50", "9.5", "100.0", "5.0", "150"]
    assert second.split() == ["8", "2.5", "100.0", "0.0", "n/a"]  # no resource samples


def test_details_errors_and_cache_na() -> None:
    text = report.render(make_report())
    assert "Details" in text
    for column in (
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
    ):
        assert column in text
    detail = next(line for line in text.splitlines() if line.split()[:3] == ["50", "20", "19"])
    assert detail.split()[-1] == "n/a"  # no X-Cache header at all
    assert detail.split()[-2] == "300"  # RSS MB
    assert "  50 users: http_500 1 (5.0%)" in text


def test_cache_hit_rate_and_over_time_table() -> None:
    text = report.render(make_report(cache="hit-l1"), show_windows=True)
    assert "Over time (1 s windows)" in text
    assert "100.0%" in text
    window = next(line for line in text.splitlines() if " 0-1 s " in line)
    assert window.split()[:6] == ["50", "0-1", "s", "9", "9", "100.0%"]


def test_warnings_for_missing_server_and_total_failure() -> None:
    run = make_report(server_pids=[])
    failing = [sample(0.5, "http_400")]
    run.levels.append(
        report.analyse(LevelResult(ClosedLoad(3), 5.0, 1.0, "time", failing, []), window_s=1.0)
    )
    text = report.render(run)
    assert "server process not found" in text
    assert "every request failed (http_400)" in text


def test_json_has_every_documented_field(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    report.write_json(make_report(cache="miss"), path)
    document = json.loads(path.read_text(encoding="utf-8"))
    documented = set(re.findall(r"`([a-z_0-9]+)`", README.read_text(encoding="utf-8")))
    missing = sorted(set(json_keys(document)) - documented)
    assert not missing, f"JSON fields not documented in stress/README.md: {missing}"
    level = document["levels"][0]
    assert document["schema"] == "stress-report/1"
    assert level["latency"]["p95_ms"] == pytest.approx(100.0)
    assert level["errors"] == {"http_500": 1}
    assert level["cache"]["hit_rate"] == 0.0
    assert level["raw"]["columns"] == list(report.RAW_COLUMNS)
    assert len(level["raw"]["rows"]) == 20
    assert document["levels"][1]["open_loop"] is True


def test_json_cache_is_null_without_header_and_raw_rows_can_be_left_out() -> None:
    document = report.to_json(make_report(), raw=False)
    assert document["levels"][0]["cache"]["hit_rate"] is None
    assert "raw" not in document["levels"][0]
    assert document["target"]["token_set"] is True


def test_every_table_column_is_documented() -> None:
    readme = README.read_text(encoding="utf-8")
    run = make_report()
    for rows in (report.summary_rows(run), report.detail_rows(run), report.window_rows(run)):
        for column in rows[0][1:]:
            assert f"`{column}`" in readme or f"`{column}`," in readme, column


def json_keys(value: Any, parent: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            if key not in DATA_KEYED:
                yield from json_keys(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from json_keys(item, parent)
