"""Async job API for long texts: durable, idempotent, owned, resumable (docs/jobs.md)."""

from tts_server.jobs.setup import setup_jobs

__all__ = ["setup_jobs"]
