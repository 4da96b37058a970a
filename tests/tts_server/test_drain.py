"""SIGTERM with open connections (RELIABILITY.md B9), over raw sockets as the report did:
what arrives on a kept-alive or pipelined connection gets 503 + Retry-After +
Connection: close, never a dropped connection; in-flight requests finish."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

LONG_TEXT = " ".join(f"Sentence number {i} of the long request is read aloud now."
                     for i in range(12))


class RawConnection:
    """One HTTP/1.1 connection driven by hand: send bytes, read whole responses."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status = int(self._line().split()[1])
        headers = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                self._line()
            self._line()
        else:
            body = self._take(int(headers.get("content-length", "0")))
        return status, headers, body

    def closed_by_server(self) -> bool:
        try:
            self.sock.settimeout(5)
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def post_tts(text: str) -> bytes:
    body = json.dumps({"text": text}).encode()
    return (b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def assert_draining(response: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = response
    assert status == 503
    assert int(headers["retry-after"]) >= 1
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "draining"


@pytest.mark.timeout(120)
def test_sigterm_answers_open_connections_503_and_finishes_in_flight(running_server):
    server = running_server({"server": {"drain_grace_s": 1.5}})
    idle_b, idle_c = RawConnection(server.port), RawConnection(server.port)
    for conn in (idle_b, idle_c):
        conn.send(get("/healthz"))
        assert conn.response()[0] == 200  # kept alive, now idle
    busy = RawConnection(server.port)
    busy.send(post_tts(LONG_TEXT) + get("/api/voices"))  # a long request, one pipelined
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    idle_b.send(post_tts("Too late."))
    assert_draining(idle_b.response())
    assert idle_b.closed_by_server()
    time.sleep(0.3)
    idle_c.send(get("/api/voices"))
    assert_draining(idle_c.response())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    status, headers, audio = busy.response()  # the request in flight finishes whole
    assert status == 200 and audio[:4] == b"RIFF"
    assert int.from_bytes(audio[40:44], "little") == len(audio) - 44
    assert_draining(busy.response())  # the pipelined one is answered, not dropped
    assert busy.closed_by_server()
    assert server.process.wait(60) == 0
    for conn in (idle_b, idle_c, busy):
        conn.close()
