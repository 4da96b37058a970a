"""Async job API for long texts (being built): routes and runner are registered here."""

from __future__ import annotations

from aiohttp import web


def setup_jobs(app: web.Application) -> None:
    """Register the job routes and the runner's cleanup context (none yet)."""
