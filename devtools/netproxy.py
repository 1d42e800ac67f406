"""Proxies in front of the local servers, to make a server fail as seen from its client.

``FlakyProxy`` is a TCP proxy in front of the S3 server.

``delay`` (seconds) is added before each request is forwarded, to stand in for the round
trip to a remote object store (benchmarks). ``die_after(n)`` forwards ``n`` more requests,
then drops every connection and refuses new ones, as a crashed server would; ``revive()``
serves again. ``fail_next(n, status)`` answers the next ``n`` requests itself with an HTTP
error (503 Slow Down), as a throttling server does. The S3 server process behind it keeps
its data, so a clean rerun can be checked.

``FailingHttpProxy`` speaks HTTP in front of the MLflow server and answers chosen requests
itself with an error (``fail``): which ones is counted, not timed, so a test knows exactly
which client calls fail. Everything else is forwarded.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable

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
            for end in (client, upstream):  # relay each piece at once, as the client sent it:
                # with Nagle, a request's body waited for the ACK of its headers (40 ms)
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


# Per-connection headers a proxy must not pass on (RFC 9110, 7.6.1).
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


class FailingHttpProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``).

    ``fail(paths, which, status)``: of the requests to one of ``paths`` that arrive from then
    on, numbered from 0, those whose number is in ``which`` are answered with ``status`` and an
    MLflow-style JSON error and never reach the server (``failed`` counts them). ``seen`` lists
    every request as ``(method, path, status answered)``, in order.
    """

    def __init__(self, upstream: str) -> None:
        target = urllib.parse.urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.seen: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._paths: frozenset[str] = frozenset()
        self._which: frozenset[int] = frozenset()
        self._status = 503
        self._matched = 0
        self.failed = 0
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def fail(self, paths: Iterable[str], which: Iterable[int], status: int = 503) -> None:
        with self._lock:
            self._paths, self._which, self._status = frozenset(paths), frozenset(which), status
            self._matched = 0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _verdict(self, path: str) -> int | None:
        """The status to answer ``path`` with here, or None to forward it."""
        with self._lock:
            if path not in self._paths:
                return None
            number, self._matched = self._matched, self._matched + 1
            if number not in self._which:
                return None
            self.failed += 1
            return self._status

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.seen.append((method, path, status))

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # the test reads ``seen``; no access log on stderr

            def _relay(self) -> None:
                body = self._read_body()
                path = urllib.parse.urlsplit(self.path).path
                status = proxy._verdict(path)
                if status is not None:
                    proxy._record(self.command, path, status)
                    error = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "proxy fault"}
                    self._answer(
                        status, [("Content-Type", "application/json")], json.dumps(error).encode()
                    )
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=300)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                proxy._record(self.command, path, response.status)
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                self._answer(response.status, kept, data)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

        return Handler
