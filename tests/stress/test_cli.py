"""`python -m stress` end to end, as a subprocess against servers running in the test process."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web

from stress import arguments, cli, plot
from stress.texts import SEED_TEXTS
from tests.stress.conftest import StartServer
from tests.stress.test_report import README, json_keys, make_report

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ("seed", "unique", "open", "mixed", "selftest")


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Runs `python -m stress ARGS`; the test's event loop keeps serving meanwhile."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stress",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def env_without_token(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != arguments.TOKEN_ENV}
    return {**env, **extra}


class Recorder:
    """A /api/tts handler that keeps what it was sent and answers like the TTS server."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.seen_texts: set[str] = set()
        self.headers = headers or {}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.headers.get("Authorization", ""), body))
        cache = "hit-l1" if body["text"] in self.seen_texts else "miss"
        self.seen_texts.add(body["text"])
        return web.Response(body=b"audio", headers={"X-Cache": cache, **self.headers})


def test_every_scenario_and_option_has_help() -> None:
    parser = arguments.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(subcommands.choices) == SCENARIOS
    for name, sub in subcommands.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help"


async def test_help_runs_and_names_the_scenarios() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0
    assert all(name in out for name in SCENARIOS)


@pytest.mark.parametrize(
    "args",
    [
        ["seed", "--users", "0"],
        ["seed", "--wait", "3,1"],
        ["open", "--rates", "x"],
        ["unique", "--duration", "-1"],
        ["nonsense"],
    ],
)
def test_bad_arguments_exit_with_usage_error(args: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(args)
    assert raised.value.code == 2


async def test_seed_sends_the_seed_requests_with_the_env_token(
    serve: StartServer, tmp_path: Path
) -> None:
    recorder = Recorder()
    url = await serve(recorder.handle)
    report_path = tmp_path / "seed.json"
    code, out, err = await run_cli(
        "seed",
        "--url",
        url,
        "--users",
        "3",
        "--duration",
        "1",
        "--wait",
        "0.1,0.2",
        "--json",
        str(report_path),
        env=env_without_token(TTS_TOKEN="s3cret-from-env"),
    )
    assert code == 0, err
    assert 6 <= len(recorder.requests) <= 40
    for authorization, body in recorder.requests:
        assert authorization == "Bearer s3cret-from-env"
        assert body["voice"] == "female" and body["text"] in SEED_TEXTS
    saved = report_path.read_text(encoding="utf-8")
    for text in (out, err, saved):
        assert "s3cret-from-env" not in text
    assert out.splitlines()[2].split() == ["Users", "QPS", "P95", "ms", "Error", "%", "CPU", "%"]
    assert json.loads(saved)["target"]["token_set"] is True


async def test_default_token_and_voice_override(serve: StartServer) -> None:
    recorder = Recorder()
    url = await serve(recorder.handle)
    code, _, err = await run_cli(
        "seed",
        "--url",
        url,
        "--users",
        "1",
        "--duration",
        "5",
        "--max-requests",
        "2",
        "--voice",
        "joe",
        "--quiet",
        env=env_without_token(),
    )
    assert code == 0, err
    assert [(auth, body["voice"]) for auth, body in recorder.requests] == [
        ("Bearer test-token", "joe"),
        ("Bearer test-token", "joe"),
    ]


async def test_mixed_reports_cache_hits_over_time_and_finds_the_server(
    serve: StartServer, tmp_path: Path
) -> None:
    url = await serve(Recorder().handle)
    report_path = tmp_path / "mixed.json"
    code, out, err = await run_cli(
        "mixed",
        "--url",
        url,
        "--concurrency",
        "2",
        "--duration",
        "1.5",
        "--window",
        "0.5",
        "--pool-size",
        "20",
        "--json",
        str(report_path),
        "--quiet",
    )
    assert code == 0, err
    assert "Over time (0.5 s windows)" in out and "Hit rate" in out
    document = json.loads(report_path.read_text(encoding="utf-8"))
    assert document["server"] == {"pids": [os.getpid()], "found_by": "port"}
    level = document["levels"][0]
    assert level["cache"]["hit_rate"] > 0.5  # 20 texts, many more requests: mostly repeats
    assert level["cache"]["counts"]["miss"] <= 20
    windows = level["windows"]
    assert len(windows) == 3 or len(windows) == 4
    assert windows[0]["cache"]["hit_rate"] < windows[-2]["cache"]["hit_rate"]  # it warms up
    documented = README.read_text(encoding="utf-8")
    missing = {key for key in json_keys(document) if f"`{key}`" not in documented}
    assert not missing, f"undocumented JSON fields: {sorted(missing)}"
    assert err == ""  # --quiet


async def test_open_runs_each_rate_for_the_duration(serve: StartServer, tmp_path: Path) -> None:
    url = await serve(Recorder().handle)
    report_path = tmp_path / "open.json"
    code, out, err = await run_cli(
        "open",
        "--url",
        url,
        "--rates",
        "20,40",
        "--duration",
        "1",
        "--quiet",
        "--no-raw",
        "--json",
        str(report_path),
    )
    assert code == 0, err
    assert out.splitlines()[2].split()[:2] == ["Rate/s", "QPS"]
    levels = json.loads(report_path.read_text(encoding="utf-8"))["levels"]
    assert [(lv["value"], lv["requests"], lv["open_loop"]) for lv in levels] == [
        (20.0, 20, True),
        (40.0, 40, True),
    ]
    assert levels[1]["started_s"] >= 1.0 and "raw" not in levels[0]


async def test_unique_reports_audio_seconds_per_second(serve: StartServer, tmp_path: Path) -> None:
    recorder = Recorder(headers={"X-Audio-Duration": "2.000"})
    url = await serve(recorder.handle)
    report_path = tmp_path / "unique.json"
    code, out, err = await run_cli(
        "unique",
        "--url",
        url,
        "--concurrency",
        "2",
        "--duration",
        "0.5",
        "--quiet",
        "--json",
        str(report_path),
    )
    assert code == 0, err
    texts = [body["text"] for _, body in recorder.requests]
    assert len(texts) == len(set(texts)) > 10
    level = json.loads(report_path.read_text(encoding="utf-8"))["levels"][0]
    assert level["audio_per_second"] == pytest.approx(2.0 * level["qps"])
    assert "Audio s/s" in out


async def test_selftest_reports_its_ceiling_and_stops_its_server(tmp_path: Path) -> None:
    report_path = tmp_path / "selftest.json"
    code, out, err = await run_cli(
        "selftest", "--duration", "1", "--connections", "8", "--quiet", "--json", str(report_path)
    )
    assert code == 0, err
    assert "selftest ceiling:" in out and "req/s, client CPU" in out
    document = json.loads(report_path.read_text(encoding="utf-8"))
    level = document["levels"][0]
    assert level["requests"] > 0 and level["errors"] == {}
    (server_pid,) = document["server"]["pids"]
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == "zombie"


def test_plot_without_matplotlib_fails_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    code = cli.main(["unique", "--url", "http://127.0.0.1:9", "--plot", str(tmp_path / "p.png")])
    assert code == 2
    assert "pip install" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_plot_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "run.png"
    plot.draw(make_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
