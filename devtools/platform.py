"""What the compose platform needs on this machine, made once and cached.

The production images (docker/Dockerfile) start ``FROM`` a public Python base and install wheels
from PyPI; CI can pull no image, so it builds them on a stand-in base made from Debian's
packages (``mmdebstrap`` + ``docker import``: bookworm, Python 3.11, as python:3.11-slim-bookworm)
and installs offline from a wheelhouse of the lock's wheels, served over HTTP on 127.0.0.1.
Both are cached under ``~/.cache/weather-retrain`` (WEATHER_CACHE_DIR), so a machine pays for
them once. ``python -m devtools.platform prepare`` (``.ci/setup --test``) starts Docker's daemon
if it is not running and makes both; the compose night test (tests/platform) uses the same
functions.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("WEATHER_CACHE_DIR") or Path.home() / ".cache" / "weather-retrain")
STANDIN_BASE = "weather-retrain/standin-base:bookworm-py311"
STANDIN_PACKAGES = "python3.11,python3.11-venv,ca-certificates"
# No bridge and no iptables: every container uses the host's network, on 127.0.0.1.
DOCKERD = ["dockerd", "--storage-driver=overlay2", "--bridge=none", "--iptables=false"]


def missing_tools() -> list[str]:
    """The programs the platform needs that are not installed (Debian: docker.io,
    docker-compose, mmdebstrap)."""
    return [t for t in ("docker", "dockerd", "docker-compose", "mmdebstrap") if not shutil.which(t)]


def docker_running() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def start_dockerd(timeout: float = 60) -> None:
    """Start Docker's daemon unless it runs (as root; it outlives this process, as the
    machine's PostgreSQL does)."""
    if docker_running():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "dockerd.log", "ab") as log:
        subprocess.Popen(DOCKERD, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not docker_running():
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd did not answer within {timeout:.0f}s; see {log.name}")
        time.sleep(1)


def standin_base() -> str:
    """The stand-in base image, imported from the cached root file system (made if missing)."""
    probe = subprocess.run(["docker", "image", "inspect", STANDIN_BASE], capture_output=True,
                           check=False)
    if probe.returncode == 0:
        return STANDIN_BASE
    tarball = CACHE / "base-bookworm-py311.tar"
    if not tarball.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        subprocess.run(["mmdebstrap", "--quiet", "--variant=apt", f"--include={STANDIN_PACKAGES}",
                        "bookworm", str(partial)], check=True)
        partial.rename(tarball)
    subprocess.run(["docker", "import", str(tarball), STANDIN_BASE], check=True,
                   stdout=subprocess.DEVNULL)
    return STANDIN_BASE


def uv_version() -> str:
    """The uv the image builds install (docker/Dockerfile's ``ARG UV_VERSION``)."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    match = re.search(r"^ARG UV_VERSION=(\S+)$", text, re.MULTILINE)
    if not match:
        raise RuntimeError("docker/Dockerfile has no ARG UV_VERSION=...")
    return match.group(1)


def wheelhouse() -> Path:
    """Every wheel of requirements.lock, and uv, in the cached wheelhouse. A stamp of the lock
    and uv's version says it is complete: pip asks the index about each of ~260 packages even
    when their wheels are there."""
    folder = CACHE / "wheelhouse"
    folder.mkdir(parents=True, exist_ok=True)
    lock = REPO / "requirements.lock"
    wanted = hashlib.sha256(lock.read_bytes() + uv_version().encode()).hexdigest()
    stamp = folder / ".complete"
    if stamp.is_file() and stamp.read_text() == wanted:
        return folder
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-qq", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "--dest", str(folder),
         "-r", str(lock), f"uv=={uv_version()}"],
        check=True,
    )
    stamp.write_text(wanted)
    return folder


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1 (a pip/uv ``--find-links`` page) while inside."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """uv hangs up once it has read what it needs of a wheel: not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


def prepare() -> None:
    """Docker's daemon running, the stand-in base image and the wheelhouse in place."""
    missing = missing_tools()
    if missing:
        sys.exit(f"platform: not installed: {', '.join(missing)} (Debian: apt-get install "
                 "docker.io docker-compose mmdebstrap)")
    for what, step in (("dockerd", start_dockerd), ("stand-in base image", standin_base),
                       ("wheelhouse", wheelhouse)):
        started = time.monotonic()
        step()
        print(f"platform: {what} ready ({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    if sys.argv[1:] != ["prepare"]:
        sys.exit("usage: python -m devtools.platform prepare")
    prepare()
