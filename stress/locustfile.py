"""The seed's Locust test adapted to this server (optional extra: pip install 'tts-server[locust]').

Same user model and payloads as `python -m stress seed`: each user waits 1-3 s between requests
and POSTs one of the three sentences with voice "female" and a bearer token. Run, for example:

    TTS_TOKEN=test-token locust -f stress/locustfile.py --headless \\
        --host http://127.0.0.1:8080 --users 50 --spawn-rate 50 --run-time 60s

Environment: TTS_TOKEN (default "test-token"; '' sends no Authorization header) and
TTS_VOICE (default "female"). The token is never logged.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from locust import HttpUser, between, task

try:
    from stress.texts import SEED_TEXTS, SEED_VOICE
except ImportError:  # locust puts this file's folder on sys.path, not the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from stress.texts import SEED_TEXTS, SEED_VOICE

TOKEN = os.environ.get("TTS_TOKEN", "test-token")
VOICE = os.environ.get("TTS_VOICE", SEED_VOICE)


class TTSUser(HttpUser):
    """One listener: asks for a sentence, waits 1-3 s, asks again."""

    host = "http://127.0.0.1:8080"  # --host overrides it
    wait_time = between(1, 3)

    def on_start(self) -> None:
        if TOKEN:
            self.client.headers["Authorization"] = f"Bearer {TOKEN}"

    @task
    def synthesize(self) -> None:
        payload = {"text": random.choice(SEED_TEXTS), "voice": VOICE}
        self.client.post("/api/tts", json=payload, name="/api/tts")
