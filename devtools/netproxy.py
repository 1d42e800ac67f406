"""A TCP proxy in front of the S3 server, to make the server fail as seen from the client.

``delay`` (seconds) is added before each request is forwarded, to stand in for the round
trip to a remote object store (benchmarks). ``die_after(n)`` forwards ``n`` more requests,
then drops every connection and refuses new ones, as a crashed server would; ``revive()``
serves again. ``fail_next(n, status)`` answers the next ``n`` requests itself with an HTTP
error (503 Slow Down), as a throttling server does. The S3 server process behind it keeps
its data, so a clean rerun can be checked.
"""

from __future__ import annotations

import re
import socket
import threading
import time

_REQUEST = re.compile(rb"(?:^|\r\n)(GET|PUT|POST|HEAD|DELETE) /")


class FlakyProxy:
    def __init__(self, upstream_port: int, delay: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._dead = False
        self._budget: int | None = None
        self._fail: list[int] = []
        self._conns: list[socket.socket] = []
        self.requests = 0
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def die_after(self, n: int) -> None:
        with self._lock:
            self._budget = n

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._fail = [status] * n

    def revive(self) -> None:
        with self._lock:
            self._dead, self._budget = False, None

    def close(self) -> None:
        self._listener.close()
        self._kill_all()

    def _kill_all(self) -> None:
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._conns.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._dead:
                    self.refused += 1
                    client.close()
                    continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client:
                    n = len(_REQUEST.findall(data))
                    with self._lock:
                        if self._fail and n:
                            status = self._fail.pop()
                            body = b"<Error><Code>SlowDown</Code><Message>slow</Message></Error>"
                            src.sendall(
                                b"HTTP/1.1 %d Slow Down\r\nContent-Length: %d\r\n"
                                b"Content-Type: application/xml\r\n\r\n%s"
                                % (status, len(body), body)
                            )
                            continue
                        self.requests += n
                        if self._budget is not None:
                            self._budget -= n
                            if self._budget < 0:
                                self._dead = True
                    if self._dead:
                        self._kill_all()
                        return
                    if n and self.delay:
                        time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
