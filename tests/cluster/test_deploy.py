"""deploy/systemd's unit template: systemd accepts it, and it starts the server as the
CLI expects with a stop timeout that covers the drain."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tts_server.cli import parse_args
from tts_server.config import load_settings

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "tts-server@.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path):
    text = UNIT.read_text().replace("/opt/tts-server/.venv/bin/python", sys.executable)
    instance = tmp_path / "tts-server@8080.service"
    instance.write_text(text.replace("WorkingDirectory=/opt/tts-server",
                                     f"WorkingDirectory={REPO}"))
    result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_unit_runs_the_server_on_its_instance_port_and_waits_for_the_drain():
    service = unit()["Service"]
    command = shlex.split(service["ExecStart"].replace("%i", "8080"))
    assert command[1:3] == ["-m", "tts_server"]
    args = parse_args(command[3:])
    assert (args.command, args.port, args.config) == ("serve", 8080,
                                                      "/etc/tts-server/config.toml")
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    defaults = load_settings(REPO / "config.toml", {})
    needed = defaults.server.drain_timeout_s + 2 * defaults.pool.stop_timeout_s
    assert float(re.sub(r"s$", "", service["TimeoutStopSec"])) > needed
