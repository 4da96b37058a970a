"""Async job API for long texts: durable, idempotent, owned, resumable (docs/jobs.md).

Importing this package stays light (JobSettings only), so tts_server.config can import
JobSettings for its [jobs] section without an import cycle; setup_jobs loads the rest.
"""

from __future__ import annotations

from aiohttp import web

from .settings import JobSettings

__all__ = ["JobSettings", "setup_jobs"]


def setup_jobs(app: web.Application) -> None:
    """Register the job routes and the runner's cleanup context (nothing if disabled)."""
    from .setup import install  # here, not above: the app's modules import tts_server.config

    install(app)
