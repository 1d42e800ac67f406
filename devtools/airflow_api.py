"""A small client of Airflow 3's public REST API (``/api/v2``), as the UI and scripts use it.

The demo, the night runner, the e2e tests and the benchmarks talk to a running Airflow only
through this: a JWT from ``POST /auth/token`` (the simple auth manager's login), then DAGs,
runs, task instances, XComs, task logs and Asset events. Standard library only, no Airflow
import: the caller is never configured as an Airflow component.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any


class ApiError(RuntimeError):
    """The API answered an error status; ``status`` and ``detail`` say which and why."""

    def __init__(self, method: str, path: str, status: int, detail: Any) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class AirflowApi:
    """A logged-in client of one Airflow API server."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        body = {"username": username, "password": password}
        self.token = self._request("POST", "/auth/token", body, token=None)["access_token"]

    def _request(self, method: str, path: str, body: Any = None, *, token: str | None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.url + path, method=method, headers=headers,
            data=None if body is None else json.dumps(body).encode(),
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw).get("detail", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            raise ApiError(method, path, exc.code, detail) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """``method path`` with the token; the decoded JSON answer, or :class:`ApiError`."""
        return self._request(method, path, body, token=self.token)

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG as the API lists it, or None before the dag-processor has parsed it."""
        try:
            return self.call("GET", f"/api/v2/dags/{_q(dag_id)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def dag_ids(self) -> list[str]:
        return [d["dag_id"] for d in self.call("GET", "/api/v2/dags?limit=100")["dags"]]

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"/api/v2/dags/{_q(dag_id)}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        """A manual run with ``conf`` (Airflow validates it against the params: 400 if bad)."""
        body = {"logical_date": None, "conf": conf}
        return self.call("POST", f"/api/v2/dags/{_q(dag_id)}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """The run once it has ended (success or failed). A poll the server is too busy to
        answer in time is asked again, not taken as the run's failure."""
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            try:
                run = self.dag_run(dag_id, run_id)
            except (TimeoutError, urllib.error.URLError):
                time.sleep(3)
                continue
            state = run["state"]
            if state in ("success", "failed"):
                return run
            time.sleep(3)
        raise TimeoutError(f"{dag_id} {run_id} still {state} after {timeout}s")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's task instances by task id."""
        data = self.call("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances")
        return {ti["task_id"]: ti for ti in data["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """A task's XCom value (a task's return value is stored as JSON), or None if absent."""
        path = (f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
                f"/xcomEntries/{_q(key)}")
        try:
            value = self.call("GET", path)["value"]
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(value) if isinstance(value, str) else value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """A task attempt's log as the UI shows it, one event per line."""
        path = (f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
                f"/logs/{try_number}?full_content=true")
        return "\n".join(_log_line(line) for line in self.call("GET", path)["content"])

    def asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Asset events the run emitted."""
        query = urllib.parse.urlencode({"source_dag_id": dag_id, "source_run_id": run_id})
        return self.call("GET", f"/api/v2/assets/events?{query}")["asset_events"]

    def wait_for_dag(self, dag_id: str, parsed_after: datetime, timeout: float) -> dict[str, Any]:
        """The DAG once the dag-processor has parsed it after ``parsed_after`` (aware datetime).

        A DAG from an earlier start is in the database already, serialized with that start's
        environment (its schedule, for one): only a fresh parse reflects this one.
        """
        deadline = time.monotonic() + timeout
        while True:
            dag = self.dag(dag_id)
            parsed = (dag or {}).get("last_parsed_time")
            if dag is not None and parsed and datetime.fromisoformat(parsed) > parsed_after:
                return dag
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG {dag_id} not parsed by the dag-processor in {timeout}s")
            time.sleep(1)


def _log_line(line: Any) -> str:
    """A structured log line as text: its event, then its exceptions' types and messages."""
    if not isinstance(line, dict):
        return str(line)
    errors = [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in line.get("error_detail") or []]
    return "\n".join([str(line.get("event", "")), *errors])


def _q(part: str) -> str:
    """One path segment, escaped (manual run ids contain ``:`` and ``+``)."""
    return urllib.parse.quote(part, safe="")


def health(url: str) -> dict[str, Any] | None:
    """``/api/v2/monitor/health`` (no login): the components' heartbeats; None if no answer."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None
