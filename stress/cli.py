"""Command line: `python -m stress {seed,unique,open,mixed,selftest} [options]`."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import eventloop, plot, report, scenarios, selftest, texts
from .arguments import build_parser
from .client import TargetOptions
from .resources import server_pids_for_url
from .runner import LevelResult, RunOptions, run_levels
from .scenarios import Scenario


@dataclass(frozen=True)
class OutputOptions:
    """What to produce besides the text report on stdout."""

    json_path: Path | None = None
    plot_path: Path | None = None
    raw_samples: bool = True  # every request's timings in the JSON
    window_s: float = 10.0
    show_windows: bool = False


def target_from_args(args: argparse.Namespace) -> TargetOptions:
    return TargetOptions(base_url=args.url, token=args.token, timeout_s=args.timeout)


def run_options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        duration_s=args.duration,
        max_requests=args.max_requests,
        sample_interval_s=args.sample_interval,
        quiet=args.quiet,
        seed=args.seed,
    )


def output_from_args(args: argparse.Namespace) -> OutputOptions:
    return OutputOptions(
        json_path=args.json,
        plot_path=args.plot,
        raw_samples=not args.no_raw,
        window_s=args.window,
        show_windows=args.show_windows or args.command == "mixed",
    )


def body_from_args(args: argparse.Namespace) -> texts.BodyTemplate:
    return texts.BodyTemplate(
        voice=args.voice or None,
        speed=args.speed,
        audio_format=args.audio_format,
        stream=True if args.stream else None,
    )


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    body = body_from_args(args)
    rng = random.Random(args.seed)
    if args.command == "seed":
        return scenarios.seed(args.users, args.wait, args.ramp_up, body, rng)
    if args.command == "unique":
        return scenarios.unique(args.concurrency, body, rng)
    if args.command == "mixed":
        return scenarios.mixed(args.concurrency, args.pool_size, args.zipf, body, rng)
    source, settings = open_texts(args, rng)
    return scenarios.open_rates(args.rates, args.connections, source, body, settings)


def open_texts(
    args: argparse.Namespace, rng: random.Random
) -> tuple[texts.TextSource, dict[str, Any]]:
    if args.texts == "seed":
        return texts.seed_texts(rng), {"texts": "seed"}
    if args.texts == "zipf":
        pool = texts.text_pool(args.pool_size, random.Random(rng.random()))
        settings = {"texts": "zipf", "pool_size": args.pool_size, "zipf_exponent": args.zipf}
        return texts.zipf_texts(pool, args.zipf, rng), settings
    return texts.unique_texts(rng), {"texts": "unique"}


def discover_server(url: str, pid: int | None) -> dict[str, Any]:
    if pid is not None:
        return {"pids": [pid], "found_by": "--server-pid"}
    pids = server_pids_for_url(url)
    return {"pids": pids, "found_by": "port" if pids else "none"}


@dataclass(frozen=True)
class RunHeader:
    """What the report says about a run besides its levels."""

    scenario: str
    unit: str
    target: TargetOptions
    server: dict[str, Any]
    settings: dict[str, Any]
    started_at: str


def build_report(
    header: RunHeader, results: Sequence[LevelResult], window_s: float
) -> report.RunReport:
    target_info = {
        "url": header.target.url,
        "token_set": bool(header.target.token),  # never the token itself
        "timeout_s": header.target.timeout_s,
    }
    levels = [report.analyse(result, window_s) for result in results]
    return report.RunReport(
        header.scenario,
        header.unit,
        header.started_at,
        target_info,
        header.settings,
        header.server,
        levels,
    )


def run_settings(options: RunOptions, window_s: float, *extras: dict[str, Any]) -> dict[str, Any]:
    settings = {key: value for key, value in asdict(options).items() if key != "quiet"}
    settings["window_s"] = window_s
    for extra in extras:
        settings.update(extra)
    return settings


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_scenario(args: argparse.Namespace) -> int:
    scenario = scenario_from_args(args)
    target, options = target_from_args(args), run_options_from_args(args)
    output = output_from_args(args)
    server = discover_server(args.url, args.server_pid)
    started_at = now_iso()
    results = eventloop.run(
        run_levels(scenario.loads, scenario.bodies, target, options, server["pids"]),
        use_uvloop=not args.no_uvloop,
    )
    request = {"body": body_from_args(args).fields(), "uvloop": not args.no_uvloop}
    settings = run_settings(options, output.window_s, scenario.settings, request)
    header = RunHeader(scenario.name, scenario.unit, target, server, settings, started_at)
    emit(build_report(header, results, output.window_s), output)
    return 0


def run_selftest(args: argparse.Namespace) -> int:
    options = selftest.SelftestOptions(
        connections=args.connections, duration_s=args.duration, quiet=args.quiet
    )
    started_at = now_iso()
    target, pids, result = eventloop.run(selftest.selftest(options), use_uvloop=not args.no_uvloop)
    output = OutputOptions(json_path=args.json, raw_samples=False, window_s=1.0)
    run_options = RunOptions(duration_s=options.duration_s, max_requests=options.max_requests)
    settings = run_settings(run_options, output.window_s, {"uvloop": not args.no_uvloop})
    server = {"pids": pids, "found_by": "selftest"}
    header = RunHeader("selftest", "Connections", target, server, settings, started_at)
    run = build_report(header, [result], output.window_s)
    emit(run, output)
    level = run.levels[0]
    print(selftest.verdict(level.stats.qps, level.resources.client_cpu_mean))
    return 0


def emit(run: report.RunReport, output: OutputOptions) -> None:
    print(report.render(run, show_windows=output.show_windows), end="")
    if output.json_path is not None:
        report.write_json(run, output.json_path, raw=output.raw_samples)
        print(f"JSON written to {output.json_path}")
    if output.plot_path is not None:
        plot.draw(run, output.plot_path)
        print(f"plot written to {output.plot_path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "selftest":
        return run_selftest(args)
    if args.plot is not None:
        try:
            plot.require_matplotlib()  # fail before a long run, not after it
        except plot.PlotUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        return run_scenario(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
