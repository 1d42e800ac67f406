"""moto's S3 server, with conditional writes made atomic as S3's are.

moto checks ``If-None-Match`` / ``If-Match`` and then writes, in one of its server's threads,
with nothing in between held: two conditional writes of one key at the same instant can both
pass the check (seen in CI: two promotions both took the promotion lease). S3 and MinIO
guarantee that exactly one of them wins. Here every conditional write (a ``PUT``, ``POST`` or
``DELETE`` carrying either header) runs under one lock; everything else stays concurrent.

Run as ``python -m devtools.s3_server -H 127.0.0.1 -p PORT`` (``local_services.start_s3_server``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

_CONDITIONAL = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH")
_WRITES = frozenset({"PUT", "POST", "DELETE"})

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def atomic_conditional_writes(app: WsgiApp) -> WsgiApp:
    """``app`` with its conditional writes serialized (the response is read inside the lock)."""
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in _WRITES or not any(
            h in environ for h in _CONDITIONAL
        ):
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))

    return wrapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument(
        "--switch-interval", type=float, default=None,
        help="seconds between the interpreter's thread switches (default 0.005); tests that "
        "hunt races make it tiny, so that a check-to-write window shows up",
    )
    args = parser.parse_args(argv)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server sets it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(
        args.host,
        args.port,
        atomic_conditional_writes(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
