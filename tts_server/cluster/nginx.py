"""nginx in front of the instances: the config (one generator for the launcher and for
deploy/nginx/), and nginx itself as a non-daemon child under a private prefix.

Why each directive is what it is, for TTS:
- least_conn over a shared zone: a synthesis holds its connection for seconds, so the
  instance with the fewest open requests is the least busy; the zone shares those counts
  (and the failure counts) among nginx's worker processes.
- proxy_buffering off: a streamed response leaves nginx as each sentence arrives.
- proxy_request_buffering stays ON (nginx's default), against the first draft of issue
  17: with it off, nginx cannot pass a request to the next instance once it has started
  sending the body, unless the whole body came with the headers; a dropped connection
  then reaches the client as 502 (measured with nginx 1.22, tests/cluster/test_nginx.py).
  TTS bodies are small: client_body_buffer_size keeps them in memory, no temp file.
- HTTP/1.1 with keepalive to the instances: no connect per request.
- proxy_next_upstream error timeout http_503 non_idempotent: a refused or dropped
  connection, a connect timeout or a 503 (draining, shedding, would miss its deadline)
  goes to the next instance, POSTs too: synthesis is a pure function of the body (the
  cache key), so a repeat is safe. Not so for POST /api/tts/jobs (a repeat could create
  a second job): that location retries only what never reached an instance.
  proxy_next_upstream_tries = the number of instances (each at most once), and
  proxy_next_upstream_timeout = server.request_timeout_s (no retry past the deadline).
- Timeouts: proxy_read_timeout = request_timeout_s + 10 s (the server answers 503 itself
  at its deadline; past that margin the instance is hung), connect 2 s.
- X-Forwarded-For = $remote_addr, replaced, not appended: nginx is the edge, so a
  client cannot smuggle an address in. The instances believe it only from the proxy's
  address (auth.trusted_proxies); locally nginx connects from its own loopback address
  (proxy_bind 127.0.0.2), so a local client that skips nginx cannot claim one either.
- Passive health: max_fails failures (errors, timeouts, 503s) within fail_timeout take
  an instance out for fail_timeout. Because 503s count, a cluster whose every instance
  sheds would be taken out whole, and nginx would answer "no live upstreams" for
  fail_timeout even to requests the instances would serve (seen in bench_cluster under a
  crowded CPU). Each instance is therefore listed a second time as a backup that never
  counts as failed: with every primary out, nginx still asks the instances.
- The instances' own responses (JSON errors, 429 and 503 with Retry-After) pass through
  untouched. What nginx itself would answer (no instance answered: 502/504, body too
  large: 413) is rewritten into the server's JSON error shape, with Retry-After on 503.
- /metrics is per instance: scrape the instances, not the proxy (it answers 404).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tts_server.config import Settings

from .processes import Child, wait_port

ENV_BINARY = "TTS_NGINX"
PROXY_BIND = "127.0.0.2"  # the local cluster's proxy source address, trusted by instances
READ_MARGIN_S = 10


def find_nginx() -> str | None:
    """$TTS_NGINX, else nginx on PATH, else Debian's /usr/sbin/nginx (root's PATH only)."""
    configured = os.environ.get(ENV_BINARY)
    if configured:
        return configured if Path(configured).is_file() else None
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    match = re.search(r"nginx/(\S+)", out.stderr + out.stdout)
    return match.group(1) if match else "unknown"


@dataclass(frozen=True)
class Site:
    """What the http-context part of the config depends on."""

    listen: str  # "127.0.0.1:8080" or "80"
    upstreams: tuple[str, ...]  # "host:port" of each instance
    request_timeout_s: float = 120.0
    max_body_bytes: int = 1_048_576  # the largest body any route accepts (jobs)
    retry_after_s: int = 2
    proxy_bind: str | None = None
    max_fails: int = 3
    fail_timeout_s: int = 5
    keepalive: int = 32  # idle connections kept per nginx worker
    listen_backlog: int = 2048
    server_name: str = "_"
    extra_comment: tuple[str, ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: Settings, listen: str, upstreams: tuple[str, ...],
                      **options: object) -> Site:
        return cls(
            listen=listen, upstreams=upstreams,
            request_timeout_s=settings.server.request_timeout_s,
            max_body_bytes=max(settings.server.max_body_bytes, settings.jobs.max_body_bytes),
            retry_after_s=settings.server.retry_after_s,
            listen_backlog=settings.server.listen_backlog,
            **options,  # type: ignore[arg-type]
        )


def _error_json(code: str, message: str) -> str:
    """The server's error body, quoted for nginx's return directive."""
    assert "'" not in message
    return "'" + json.dumps({"error": {"code": code, "message": message}}) + "'"


def _proxy_block(site: Site, indent: str, retry_non_idempotent: bool) -> list[str]:
    timeout_s = math.ceil(site.request_timeout_s)
    retry_on = "error timeout http_503" + (" non_idempotent" if retry_non_idempotent else "")
    lines = [
        "proxy_pass http://tts_instances;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_buffering off;",
        "proxy_request_buffering on;",
        f"proxy_next_upstream {retry_on};",
        f"proxy_next_upstream_tries {len(site.upstreams)};",
        f"proxy_next_upstream_timeout {timeout_s}s;",
        "proxy_connect_timeout 2s;",
        "proxy_send_timeout 30s;",
        f"proxy_read_timeout {timeout_s + READ_MARGIN_S}s;",
    ]
    if site.proxy_bind:
        lines.append(f"proxy_bind {site.proxy_bind};")
    return [indent + line for line in lines]


def render_site(site: Site) -> str:
    """The upstream and server blocks (http context): deploy/nginx/tts-server.conf."""
    body_k = math.ceil(site.max_body_bytes / 1024)
    retry = site.retry_after_s
    servers = [f"    server {u} max_fails={site.max_fails} fail_timeout={site.fail_timeout_s}s;"
               for u in site.upstreams]
    # The same instances again as backups that never count as failed: when passive health
    # has taken every instance out (all shedding 503s at once, say), nginx still asks them
    # and passes their own answer on, instead of "no live upstreams" for fail_timeout.
    backups = [f"    server {u} backup max_fails=0;" for u in site.upstreams]
    comment = [f"# {line}".rstrip() for line in site.extra_comment]
    lines = [
        *comment,
        "upstream tts_instances {",
        "    zone tts_instances 64k;",
        "    least_conn;",
        *servers,
        *backups,
        f"    keepalive {site.keepalive};",
        "    keepalive_timeout 60s;",  # below the instances' own idle timeout
        "}",
        "",
        "server {",
        f"    listen {site.listen} backlog={site.listen_backlog};",
        f"    server_name {site.server_name};",
        "    server_tokens off;",
        f"    client_max_body_size {body_k}k;",
        f"    client_body_buffer_size {body_k}k;",
        "    client_header_timeout 30s;",
        "    client_body_timeout 30s;",
        "    send_timeout 60s;",
        "    keepalive_timeout 75s;",
        "",
        "    location / {",
        *_proxy_block(site, "        ", retry_non_idempotent=True),
        "    }",
        "",
        "    # A repeated job submission could create a second job: retry only what no",
        "    # instance received (send Idempotency-Key and retry yourself on 503).",
        "    location /api/tts/jobs {",
        *_proxy_block(site, "        ", retry_non_idempotent=False),
        "    }",
        "",
        "    location = /metrics {",
        "        default_type application/json;",
        "        return 404 " + _error_json(
            "not_found", "metrics are per instance: scrape the instances") + ";",
        "    }",
        "",
        "    # nginx's own errors in the server's JSON shape; the instances' pass untouched.",
        "    error_page 502 503 = @unavailable;",
        "    error_page 504 = @upstream_timeout;",
        "    error_page 413 = @too_large;",
        "    location @unavailable {",
        "        default_type application/json;",
        f"        add_header Retry-After {retry} always;",
        "        return 503 " + _error_json(
            "unavailable", "no server instance could take the request; retry later") + ";",
        "    }",
        "    location @upstream_timeout {",
        "        default_type application/json;",
        f"        add_header Retry-After {retry} always;",
        "        return 503 " + _error_json(
            "upstream_timeout", "the server instance did not answer in time") + ";",
        "    }",
        "    location @too_large {",
        "        default_type application/json;",
        "        return 413 " + _error_json(
            "body_too_large", f"request bodies are limited to {site.max_body_bytes} bytes"
        ) + ";",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_main(site_text: str, prefix: Path, worker_processes: str = "auto",
                shutdown_timeout_s: float = 30.0, access_log: bool = True) -> str:
    """A whole nginx.conf for a non-daemon nginx whose every file lives under `prefix`."""
    temp = {name: prefix / "temp" / name for name in
            ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    log = (f"    access_log {prefix / 'access.log'} tts buffer=64k flush=1s;"
           if access_log else "    access_log off;")
    indented = "\n".join(("    " + line) if line else "" for line in site_text.splitlines())
    return "\n".join([
        "# Generated by tts_server.cluster for one local run; deleted when it stops.",
        "daemon off;",
        "master_process on;",
        f"worker_processes {worker_processes};",
        f"pid {prefix / 'nginx.pid'};",
        f"error_log {prefix / 'error.log'} warn;",
        f"worker_shutdown_timeout {math.ceil(shutdown_timeout_s)}s;",
        "events {",
        "    worker_connections 4096;",
        "}",
        "http {",
        "    log_format tts '$remote_addr [$time_local] \"$request\" $status $body_bytes_sent '",
        "                   'rt=$request_time upstream=$upstream_addr '",
        "                   'ustatus=$upstream_status urt=$upstream_response_time '",
        "                   'rid=$sent_http_x_request_id';",
        log,
        f"    client_body_temp_path {temp['client_body']};",
        f"    proxy_temp_path {temp['proxy']};",
        f"    fastcgi_temp_path {temp['fastcgi']};",
        f"    uwsgi_temp_path {temp['uwsgi']};",
        f"    scgi_temp_path {temp['scgi']};",
        "    default_type application/octet-stream;",
        "",
        indented,
        "}",
        "",
    ])


class NginxProcess:
    """nginx -p PREFIX -c PREFIX/nginx.conf, as a child (daemon off), stopped gracefully."""

    def __init__(self, binary: str, prefix: Path, site: Site, listen_port: int,
                 worker_processes: str = "auto", shutdown_timeout_s: float = 30.0) -> None:
        self.binary = binary
        self.prefix = prefix
        self.site = site
        self.listen_port = listen_port
        self.worker_processes = worker_processes
        self.shutdown_timeout_s = shutdown_timeout_s
        self.config_path = prefix / "nginx.conf"
        self.error_log = prefix / "error.log"
        self.child: Child | None = None

    def write_config(self) -> Path:
        (self.prefix / "temp").mkdir(parents=True, exist_ok=True)
        text = render_main(render_site(self.site), self.prefix, self.worker_processes,
                           self.shutdown_timeout_s)
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.config_path),
                "-e", str(self.error_log), *extra]

    def test_config(self) -> None:
        """nginx -t: raise RuntimeError with nginx's own words when the config is wrong."""
        result = subprocess.run(self.command("-t", "-q"), capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"nginx rejects its config: {result.stderr.strip()}")

    def start(self, timeout_s: float = 15.0) -> NginxProcess:
        self.write_config()
        self.test_config()
        self.child = Child("nginx", self.command(), self.prefix / "nginx.out").start()
        try:
            wait_port(self.listen_port, self.child, timeout_s)
        except RuntimeError as exc:
            self.child.stop(timeout_s=2)
            raise RuntimeError(f"{exc}\n{self._error_log_tail()}") from None
        return self

    def _error_log_tail(self) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-10:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGQUIT: stop accepting, finish the requests in flight (bounded), exit."""
        if self.child is not None:
            self.child.stop(signal.SIGQUIT, timeout_s)

    def running(self) -> bool:
        return self.child is not None and self.child.running()
