"""A loopback TCP proxy in front of the real server that breaks /api/tts answers mid-stream.

The browser talks to the proxy; everything is forwarded byte for byte, except that once a
connection carries `POST /api/tts`, its answer is cut after `cut_after` bytes. `stop()`
closes the listener and every connection, so later requests are refused outright.
"""

from __future__ import annotations

import socket
import threading


class BreakingProxy:
    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._spawn(self._accept)

    def _spawn(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
                stopped = self._stopped
            if stopped:
                client.close()
                upstream.close()
                return
            connection = {"tts": False, "sent": 0}
            self._spawn(self._requests, client, upstream, connection)
            self._spawn(self._responses, upstream, client, connection)

    def _requests(self, client: socket.socket, upstream: socket.socket, connection: dict) -> None:
        try:
            while data := client.recv(65536):
                if data.startswith(b"POST /api/tts "):
                    connection.update(tts=True, sent=0)
                upstream.sendall(data)
        except OSError:
            pass
        self._close(client, upstream)

    def _responses(self, upstream: socket.socket, client: socket.socket, connection: dict) -> None:
        try:
            while data := upstream.recv(65536):
                if connection["tts"]:
                    room = self.cut_after - connection["sent"]
                    if len(data) >= room:
                        client.sendall(data[:room])
                        with self._lock:
                            self.cuts += 1
                        break
                    connection["sent"] += len(data)
                client.sendall(data)
        except OSError:
            pass
        self._close(client, upstream)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._close(self._listener)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        self._close(*sockets)
        for thread in threads:
            thread.join(timeout=5)
        for sock in sockets:
            sock.close()
