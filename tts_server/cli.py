"""Command line: `python -m tts_server [serve] [--host H] [--port P] [--config FILE]`."""

from __future__ import annotations

import argparse
import sys

from inference.pool import PoolStartError
from tts_server.config import ConfigError, Settings, load_settings
from tts_server.gateway.auth import hash_token, new_token


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tts-server", description=__doc__)
    parser.add_argument(
        "command", nargs="?", default="serve",
        choices=["serve", "check-config", "new-token", "hash-token"],
        help="serve (default); check-config; new-token: print a fresh token and its config"
        " entry; hash-token: print the SHA-256 of a token read from stdin",
    )
    parser.add_argument("--name", default="client", help="new-token: the token's name")
    parser.add_argument("--tier", default="standard", help="new-token: the token's tier")
    parser.add_argument("--config", help="path to config.toml (default: the repository's)")
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port", type=int, help="override server.port")
    parser.add_argument("--workers", type=int, help="override pool.workers (0 = one per core)")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    pool = {"workers": args.workers} if args.workers is not None else {}
    return settings.replace(server=server, pool=pool)


def print_new_token(name: str, tier: str) -> None:
    token = new_token()
    print(f"token (give it to the client; it is not stored): {token}")
    print("config entry (config.toml or auth.tokens_file):")
    print(f'[[auth.tokens]]\nname = "{name}"\ntier = "{tier}"\nsha256 = "{hash_token(token)}"')


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "new-token":
        print_new_token(args.name, args.tier)
        return 0
    if args.command == "hash-token":
        print(hash_token(sys.stdin.readline().strip()))
        return 0
    try:
        settings = settings_from_args(args)
        if args.command == "check-config":
            print("config ok")
            return 0
        from tts_server.server import run  # imported late: check-config needs no event loop

        run(settings)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except PoolStartError as exc:
        print(f"cannot start the inference pool: {exc}", file=sys.stderr)
        return 3
    return 0
