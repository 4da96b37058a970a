"""Fixtures of the cluster tests: nginx must be there (./run.sh test installs Debian's)."""

from __future__ import annotations

import pytest

from tts_server.cluster import find_nginx

NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (./run.sh test installs Debian's when run as root; "
           "or apt-get install nginx, or set TTS_NGINX)",
)
