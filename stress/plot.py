"""`--plot FILE.png`: latency percentiles and QPS over the run (needs the optional matplotlib)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .report import RunReport
from .stats import windows

BUCKET_S = 1.0  # plot resolution, finer than the report's windows
INSTALL_HINT = "--plot needs matplotlib: pip install 'tts-server[plot]' (or pip install matplotlib)"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> Any:
    """The pyplot module on the headless Agg backend; checked before a run, not after it."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def draw(report: RunReport, path: Path) -> None:
    pyplot = require_matplotlib()
    figure, (latency_axes, qps_axes) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 7))
    for index, level in enumerate(report.levels):
        result = level.result
        series = _series(result.samples, result.elapsed_s, result.started_s)
        color = f"C{index % 10}"
        for key, style in (("p50", ":"), ("p95", "-"), ("p99", "--")):
            latency_axes.plot(
                series["t"], series[key], style, color=color, label=f"{result.load.label} {key}"
            )
        qps_axes.plot(series["t"], series["qps"], color=color, label=result.load.label)
        for axes in (latency_axes, qps_axes):
            axes.axvline(result.started_s, color="grey", linewidth=0.5)
    latency_axes.set_ylabel("latency (ms, from scheduled start)")
    latency_axes.set_title(f"stress {report.scenario}: {report.target['url']}")
    latency_axes.legend(fontsize="x-small", ncol=3)
    qps_axes.set_ylabel("successful requests / s")
    qps_axes.set_xlabel("seconds since the run started")
    qps_axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _series(samples: list[Any], elapsed_s: float, offset_s: float) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {"t": [], "p50": [], "p95": [], "p99": [], "qps": []}
    for window in windows(samples, BUCKET_S, elapsed_s):
        series["t"].append(offset_s + (window.start_s + window.end_s) / 2)
        series["qps"].append(window.qps)
        latency = window.latency
        nan = float("nan")  # a gap in the line where nothing succeeded
        series["p50"].append(latency.p50_ms if latency else nan)
        series["p95"].append(latency.p95_ms if latency else nan)
        series["p99"].append(latency.p99_ms if latency else nan)
    return series
