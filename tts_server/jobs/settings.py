"""JobSettings: the [jobs] configuration section, and where setup_jobs reads it from.

Until `Settings` has a `jobs` field, the defaults apply; the environment variable
TTS_JOBS_SETTINGS (a JSON object of JobSettings fields) overrides them in either case.
It has no double underscore, so config.env_overrides never mistakes it for a section.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings

ENV_VAR = "TTS_JOBS_SETTINGS"


def _config_error(message: str) -> Exception:
    # Imported here: tts_server.config may import this module while it loads.
    from ..config import ConfigError

    return ConfigError(message)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _config_error(message)


@dataclass(frozen=True)
class JobSettings:
    enabled: bool = True
    # Texts longer than this get 413 (interactive requests stop at text.max_text_chars).
    max_text_chars: int = 100_000
    # Job bodies may be larger than server.max_body_bytes (the text is longer).
    max_body_bytes: int = 1_048_576
    # Jobs synthesized at once by one instance.
    max_concurrent: int = 2
    # Sentences a running job hands the pool at once; 0 = twice the piper pool's workers.
    batch_units: int = 0
    # Queued (not yet running) jobs: per owner (429 beyond) and in total (503 beyond).
    max_queued_per_owner: int = 20
    max_queued_total: int = 1000
    # Finished jobs and their audio are kept this long, then expire (404).
    result_ttl_s: int = 86_400
    # Claims of one job that may end without an outcome (a dead instance, an engine fault).
    max_attempts: int = 3
    # A running job's lease; an instance that stops renewing it loses the job to another.
    lease_ttl_s: float = 30.0
    # How often an idle runner looks for queued jobs submitted to other instances.
    poll_interval_s: float = 0.5
    # Delay before a job that hit a transient fault (engine down, deadline) runs again.
    retry_delay_s: float = 5.0
    # The runner starts no new batch while the degradation ladder is at this level or
    # above (0 = never pause): jobs alone keep the CPU busy, which the ladder reads as
    # overload and would answer by degrading interactive traffic.
    pause_at_degradation_level: int = 1
    # Redis key prefix of every job key.
    namespace: str = "tts:jobs:v1"
    # Completion webhooks go only to these hosts ("host" or "host:port"); others get 400.
    webhook_hosts: tuple[str, ...] = ()
    # HMAC-SHA256 key of X-TTS-Signature; "" sends webhooks unsigned.
    webhook_secret: str = ""
    webhook_attempts: int = 5
    webhook_timeout_s: float = 5.0
    # First delay between webhook attempts; doubles after each failure.
    webhook_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        _require(self.max_text_chars >= 1, "jobs.max_text_chars must be >= 1")
        _require(self.max_body_bytes >= 1024, "jobs.max_body_bytes must be >= 1024")
        _require(self.max_concurrent >= 1, "jobs.max_concurrent must be >= 1")
        _require(self.batch_units >= 0, "jobs.batch_units must be >= 0")
        _require(self.max_queued_per_owner >= 1, "jobs.max_queued_per_owner must be >= 1")
        _require(self.max_queued_total >= 1, "jobs.max_queued_total must be >= 1")
        _require(self.result_ttl_s >= 1, "jobs.result_ttl_s must be >= 1")
        _require(self.max_attempts >= 1, "jobs.max_attempts must be >= 1")
        _require(self.lease_ttl_s >= 1, "jobs.lease_ttl_s must be >= 1")
        _require(self.poll_interval_s > 0, "jobs.poll_interval_s must be > 0")
        _require(self.retry_delay_s >= 0, "jobs.retry_delay_s must be >= 0")
        _require(0 <= self.pause_at_degradation_level <= 3,
                 "jobs.pause_at_degradation_level must be 0..3")
        _require(bool(self.namespace), "jobs.namespace must not be empty")
        _require(self.webhook_attempts >= 1, "jobs.webhook_attempts must be >= 1")
        _require(self.webhook_timeout_s > 0, "jobs.webhook_timeout_s must be > 0")
        _require(self.webhook_backoff_s >= 0, "jobs.webhook_backoff_s must be >= 0")


def load_job_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> JobSettings:
    """settings.jobs (once config.py has it) or the defaults, then TTS_JOBS_SETTINGS."""
    from ..config import _build_section

    environ = os.environ if environ is None else environ
    base = getattr(settings, "jobs", None)
    values = dict(vars(base)) if isinstance(base, JobSettings) else {}
    raw = environ.get(ENV_VAR, "").strip()
    if raw:
        try:
            overrides = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _config_error(f"{ENV_VAR} is not JSON: {exc}") from None
        _require(isinstance(overrides, dict), f"{ENV_VAR} must be a JSON object")
        values.update(overrides)
    return _build_section("jobs", JobSettings, values)
