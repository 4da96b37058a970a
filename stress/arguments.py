"""The argument parser of `python -m stress`: scenarios as subcommands, every option explained."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias, TypeVar

from . import texts
from .runner import ThinkTime

Number = TypeVar("Number", int, float)
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # no public name
DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "TTS_TOKEN"
DEFAULT_TOKEN = "test-token"

DESCRIPTION = """\
Load generator for the TTS server's POST /api/tts. Each scenario runs one or more load levels
one after another, prints a live status line on stderr and, at the end, a table per level
(QPS, P95 ms, error %, server CPU %) plus details; --json keeps everything, --plot draws it.
Targets http://127.0.0.1:8080 unless --url says otherwise. See stress/README.md."""


def comma_list(convert: Callable[[str], Number], name: str) -> Callable[[str], tuple[Number, ...]]:
    """argparse type for "50,200,500": a non-empty tuple of positive values."""

    def parse(text: str) -> tuple[Number, ...]:
        try:
            values = tuple(convert(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name}: expected a comma list, got {text!r}"
            ) from None
        if not values or any(value <= 0 for value in values):
            raise argparse.ArgumentTypeError(f"{name}: values must be positive, got {text!r}")
        return values

    return parse


def positive(convert: Callable[[str], Number]) -> Callable[[str], Number]:
    def parse(text: str) -> Number:
        value = convert(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


def think_range(text: str) -> ThinkTime:
    low, _, high = text.partition(",")
    try:
        think = ThinkTime(float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, got {text!r}") from None
    if not 0 <= think.min_s <= think.max_s:
        raise argparse.ArgumentTypeError(f"need 0 <= MIN <= MAX, got {text!r}")
    return think


def _add_target_options(parser: argparse.ArgumentParser, default_voice: str | None) -> None:
    group = parser.add_argument_group("target and request body")
    group.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"server base URL; requests go to URL/api/tts (default {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV, DEFAULT_TOKEN),
        help=f"bearer token sent as 'Authorization: Bearer TOKEN'; '' sends none "
        f"(default: ${TOKEN_ENV}, else {DEFAULT_TOKEN!r}); never printed",
    )
    group.add_argument(
        "--timeout",
        type=positive(float),
        default=60.0,
        metavar="S",
        help="per-request timeout, connecting included; past it the request "
        "counts as error kind 'timeout' (default 60)",
    )
    voice_default = f"{default_voice!r}" if default_voice else "the server's default"
    group.add_argument(
        "--voice",
        default=default_voice,
        help=f"'voice' field of every request (default {voice_default})",
    )
    group.add_argument("--speed", type=positive(float), help="'speed' field (default: omitted)")
    group.add_argument(
        "--format",
        dest="audio_format",
        choices=["wav", "pcm"],
        help="'format' field (default: omitted, the server sends WAV)",
    )
    group.add_argument(
        "--stream",
        action="store_true",
        help="ask for chunked streaming ('stream': true); TTFB then is first audio",
    )


def _add_run_options(parser: argparse.ArgumentParser, duration_s: float) -> None:
    group = parser.add_argument_group("limits and measurement")
    group.add_argument(
        "--duration",
        type=positive(float),
        default=duration_s,
        metavar="S",
        help=f"seconds per level; no request starts after it, requests in "
        f"flight may finish (default {duration_s:g})",
    )
    group.add_argument(
        "--max-requests",
        type=positive(int),
        default=100_000,
        metavar="N",
        help="at most N requests per level; the level ends at whichever limit "
        "comes first (default 100000)",
    )
    group.add_argument(
        "--window",
        type=positive(float),
        default=10.0,
        metavar="S",
        help="width of the over-time windows in the JSON and table (default 10)",
    )
    group.add_argument(
        "--sample-interval",
        type=positive(float),
        default=1.0,
        metavar="S",
        help="how often server and client CPU/RSS are sampled (default 1)",
    )
    group.add_argument(
        "--server-pid",
        type=int,
        metavar="PID",
        help="server process whose tree (it and all descendants) is measured; "
        "default: the process listening on the --url port, if local",
    )
    group.add_argument(
        "--seed", type=int, default=1, help="random seed for texts and think times (default 1)"
    )
    group.add_argument(
        "--no-uvloop", action="store_true", help="use the standard asyncio loop instead of uvloop"
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write everything (settings, per-level stats, windows, resource "
        "samples, every request's timings) as JSON to FILE",
    )
    group.add_argument(
        "--no-raw",
        action="store_true",
        help="leave the per-request rows out of the JSON (smaller file)",
    )
    group.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw latency percentiles and QPS over time (needs matplotlib: "
        "pip install 'tts-server[plot]')",
    )
    group.add_argument(
        "--show-windows",
        action="store_true",
        help="print the over-time table (always on for 'mixed')",
    )
    group.add_argument("--quiet", action="store_true", help="no live progress line on stderr")


def _scenario_parser(
    commands: Subcommands, name: str, help_text: str, default_voice: str | None = None
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    _add_target_options(parser, default_voice)
    _add_run_options(parser, 60.0)
    _add_output_options(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stress", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="SCENARIO")
    _add_seed(commands)
    _add_unique(commands)
    _add_open(commands)
    _add_mixed(commands)
    _add_selftest(commands)
    return parser


def _add_seed(commands: Subcommands) -> None:
    parser = _scenario_parser(
        commands,
        "seed",
        "the seed's Locust test: users pause 1-3 s, then POST one of three Chinese sentences "
        "with voice 'female' and a bearer token",
        default_voice=texts.SEED_VOICE,
    )
    parser.add_argument(
        "--users",
        type=comma_list(int, "--users"),
        default=(50, 200, 500),
        help="user counts, one level each (default 50,200,500)",
    )
    parser.add_argument(
        "--wait",
        type=think_range,
        default=ThinkTime(1.0, 3.0),
        metavar="MIN,MAX",
        help="each user's pause after a response, uniform in seconds (default 1,3)",
    )
    parser.add_argument(
        "--ramp-up",
        type=float,
        default=0.0,
        metavar="S",
        help="start the users evenly over S seconds instead of all at once (default 0)",
    )


def _add_unique(commands: Subcommands) -> None:
    parser = _scenario_parser(
        commands,
        "unique",
        "never-repeating English sentences, closed loop without pauses; reports audio "
        "seconds per wall second next to QPS",
    )
    parser.add_argument(
        "--concurrency",
        type=comma_list(int, "--concurrency"),
        default=(4,),
        help="concurrent requests, one level each, e.g. 2,4,8 (default 4)",
    )


def _add_open(commands: Subcommands) -> None:
    parser = _scenario_parser(
        commands,
        "open",
        "open loop: requests leave on a fixed timetable whatever the server does; latency "
        "counts from the scheduled time, so a server falling behind shows as growing latency",
    )
    parser.add_argument(
        "--rates",
        type=comma_list(float, "--rates"),
        default=(2.0, 4.0, 8.0),
        help="arrival rates in requests/s, one level each (default 2,4,8)",
    )
    parser.add_argument(
        "--connections",
        type=positive(int),
        default=256,
        help="connection pool size; requests beyond it wait (and that wait "
        "counts as latency; default 256)",
    )
    parser.add_argument(
        "--texts",
        choices=["unique", "seed", "zipf"],
        default="unique",
        help="request texts: unique sentences, the seed's three, or the "
        "Zipf pool of 'mixed' (default unique)",
    )
    _add_pool_options(parser)


def _add_mixed(commands: Subcommands) -> None:
    parser = _scenario_parser(
        commands,
        "mixed",
        "realistic repeats: Zipf popularity over a pool of sentences, closed loop; prints the "
        "cache hit rate (X-Cache header) over time windows",
    )
    parser.add_argument(
        "--concurrency",
        type=comma_list(int, "--concurrency"),
        default=(8,),
        help="concurrent requests, one level each (default 8)",
    )
    _add_pool_options(parser)


def _add_pool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pool-size",
        type=positive(int),
        default=500,
        help="distinct sentences in the pool (default 500)",
    )
    parser.add_argument(
        "--zipf",
        type=positive(float),
        default=1.1,
        metavar="EXPONENT",
        help="popularity of rank k is proportional to 1/k**EXPONENT (default 1.1)",
    )


def _add_selftest(commands: Subcommands) -> None:
    parser = commands.add_parser(
        "selftest",
        help="measure this tool's own ceiling against a trivial server in another process",
        description="Starts `python -m stress.trivial_server` on a free 127.0.0.1 port and "
        "drives it closed loop; prints requests/s and the client's CPU use.",
    )
    parser.add_argument(
        "--connections", type=positive(int), default=64, help="concurrent connections (default 64)"
    )
    parser.add_argument(
        "--duration",
        type=positive(float),
        default=5.0,
        metavar="S",
        help="seconds to run (default 5)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    parser.add_argument("--no-uvloop", action="store_true", help="use the standard asyncio loop")
