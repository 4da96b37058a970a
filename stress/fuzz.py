"""The schemathesis fuzz test (tests/tts_server/http/test_fuzz.py), with more examples.

    python -m stress.fuzz [--examples 2000] [--steps 10] [pytest args]

It starts its own server on a free loopback port (as the test does), generates `--examples`
valid and as many invalid cases per operation, then stateful job sequences of up to
`--steps` calls, and fails on any 5xx that is not an explicit refusal, any undocumented
status and any body that does not match its documented schema.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from stress.serverproc import REPO

TEST = REPO / "tests" / "tts_server" / "http" / "test_fuzz.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="cases per operation and mode")
    parser.add_argument("--steps", type=int, default=10, help="calls per stateful sequence")
    args, rest = parser.parse_known_args(argv)
    env = {**os.environ, "FUZZ_EXAMPLES": str(args.examples), "FUZZ_STEPS": str(args.steps)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=0",
               str(TEST), *rest]
    return subprocess.call(command, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
