"""Promotion under faults, against real processes: the S3 lease, MLflow going away mid-promotion,
and two promotions racing.

- The lease (``weather_tasks.lease``) on the session's S3 server: exclusive until released, a
  second holder waits and then fails naming the first, an expired lease is taken over, and a
  holder whose lease was taken over cannot delete its successor's.
- MLflow down: a tracking server process of this test's own, stopped and started again on the
  same port and SQLite store; and the session's server behind ``FlakyProxy``, cut before each
  request of a promotion in turn. Each failure is one transient line naming the URI, and the
  retry with the server back ends with one version per run, champion new, previous old.
- The race: two processes, two winning runs evaluated against the same champion, released
  by one barrier right before ``promote_if_better``: exactly one becomes champion.

Registration needs only a run with an ``MLmodel`` file under ``model/`` and an evaluation that
says "promote", so the runs here are stand-ins (a text file, a hand-made ``EvalReport``); the
real train -> evaluate -> promote path is tests/integration/test_registry.py's.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from devtools import local_services
from devtools.netproxy import FlakyProxy
from weather_tasks import config, lease, registry, storage, tracking
from weather_tasks.config import PipelineConfig
from weather_tasks.evaluate import EvalReport
from weather_tasks.metrics import Metrics
from weather_tasks.policy import Decision

pytestmark = pytest.mark.integration


# --- the lease ---------------------------------------------------------------------------------
def _lease_owners(cfg: PipelineConfig, s3: Any) -> list[str]:
    """The owners of the lease objects now in the bucket."""
    found = s3.list_objects_v2(Bucket=cfg.bucket, Prefix=cfg.locks_prefix).get("Contents", [])
    return [storage.get_json(s3, cfg.bucket, o["Key"])["owner"] for o in found]


def test_lease_is_exclusive_until_released(cfg: PipelineConfig, s3: Any) -> None:
    first = lease.acquire(cfg, s3, "promotion/m", owner="host-a:11:manual__1")
    assert first.uri == f"s3://{cfg.bucket}/locks/promotion/m.json"
    assert _lease_owners(cfg, s3) == ["host-a:11:manual__1"]

    impatient = config.override(cfg, lease_wait=1.0)
    with pytest.raises(lease.LeaseError) as err:
        lease.acquire(impatient, s3, "promotion/m", owner="host-b:22:cli")
    message = str(err.value)
    print(f"lease held: {message}")
    assert err.value.transient and "\n" not in message
    assert message.startswith(
        f"lease {first.uri} at {cfg.s3_endpoint_url} is held by host-a:11:manual__1 until "
    )
    assert "WEATHER_LEASE_WAIT" in message
    assert _lease_owners(cfg, s3) == ["host-a:11:manual__1"]  # the waiter wrote nothing

    lease.release(cfg, s3, first)
    assert _lease_owners(cfg, s3) == []
    with lease.hold(cfg, s3, "promotion/m", owner="host-b:22:cli"):
        assert _lease_owners(cfg, s3) == ["host-b:22:cli"]
    assert _lease_owners(cfg, s3) == []


def test_expired_lease_is_taken_over_and_its_old_holder_cannot_release_it(
    cfg: PipelineConfig, s3: Any
) -> None:
    short = config.override(cfg, lease_expiry=1.0, lease_wait=30.0)
    dead = lease.acquire(short, s3, "promotion/m", owner="host-a:11:killed")  # never released

    successor = lease.acquire(short, s3, "promotion/m", owner="host-b:22:cli")
    assert successor.etag != dead.etag
    assert _lease_owners(cfg, s3) == ["host-b:22:cli"]

    lease.release(short, s3, dead)  # the old holder wakes up: its If-Match no longer matches
    assert _lease_owners(cfg, s3) == ["host-b:22:cli"]
    lease.release(short, s3, successor)
    assert _lease_owners(cfg, s3) == []


def test_simultaneous_takers_get_one_lease(service_logs: Path) -> None:
    """What the lease stands on: of many ``If-None-Match: *`` puts of one key at one instant,
    exactly one lands, as on S3. moto alone lets several through now and then (its check and
    its write are apart; CI once saw two promotions both take the lease); the project's server
    makes them atomic (``devtools.s3_server``). Its threads switch every microsecond here, so
    that an unguarded window shows up within these rounds (plain moto: a few rounds in 60)."""
    server = local_services.start_s3_server(service_logs / "race", switch_interval=1e-6)
    try:
        c = config.from_env(environ={}, bucket="lease-race", s3_endpoint_url=server.url)
        s3 = storage.make_client(c)
        local_services.ensure_bucket(s3, c.bucket)
        takers, rounds = 8, 100
        barrier = threading.Barrier(takers)

        def take(key: str) -> bool:
            barrier.wait()
            try:
                s3.put_object(Bucket=c.bucket, Key=key, Body=uuid.uuid4().bytes, IfNoneMatch="*")
                return True
            except ClientError as exc:
                assert exc.response["Error"]["Code"] in {"PreconditionFailed", "412"}
                return False

        with ThreadPoolExecutor(takers) as pool:
            for n in range(rounds):
                won = list(pool.map(take, [f"locks/race-{n}.json"] * takers))
                assert won.count(True) == 1, f"round {n}: {won.count(True)} takers got the lease"
    finally:
        server.stop()


# --- promotions with stand-in runs ---------------------------------------------------------------
@pytest.fixture
def pcfg(cfg: PipelineConfig, mlflow_server: local_services.Service) -> PipelineConfig:
    """A fresh bucket and registered model on the session's servers; MLflow fails fast."""
    c = config.override(
        cfg,
        mlflow_tracking_uri=mlflow_server.url,
        registered_model=f"pf-{uuid.uuid4().hex[:8]}",
        experiment_name="test-promotion-faults",
        mlflow_http_retries=0,
        mlflow_http_timeout=10,
    )
    tracking.configure_process(c)  # the autouse fixture puts the process back afterwards
    return c


def _stand_in_run(cfg: PipelineConfig) -> str:
    """A finished run with what registration reads: an ``MLmodel`` file under ``model/``."""
    client = tracking.client(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(cfg.experiment_name)
    )
    run_id = client.create_run(experiment_id).info.run_id
    client.log_text(
        run_id, "stand-in model for registry tests\n", f"{tracking.MODEL_ARTIFACT}/MLmodel"
    )
    client.set_terminated(run_id)
    return run_id


def _won(run_id: str, against: str | None) -> dict[str, Any]:
    """An evaluation saying ``run_id`` beats champion ``against``, as the DAG passes it."""
    return EvalReport(
        run_id=run_id,
        model_uri=tracking.run_model_uri(run_id),
        manifest_version="v000001",
        n_test=10,
        challenger=Metrics(accuracy=0.9, per_class={}),
        champion=None,
        champion_version=against,
        champion_run_id=None,
        champion_error=None,
        mcnemar_p=None,
        decision=Decision(True, ["beats the champion (stand-in evaluation)"]),
    ).as_dict()


def _registry_state(
    cfg: PipelineConfig,
) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """(alias -> version, [(version, run id)] by version) of the registered model."""
    client = tracking.client(cfg)
    versions = client.search_model_versions(f"name = '{cfg.registered_model}'")
    aliases = {}
    if versions:
        model = client.get_registered_model(cfg.registered_model)
        aliases = {k: str(v) for k, v in model.aliases.items()}
    return aliases, sorted(((str(v.version), v.run_id) for v in versions), key=lambda x: int(x[0]))


def _promoted_at(cfg: PipelineConfig, version: str) -> str | None:
    mv = tracking.client(cfg).get_model_version(cfg.registered_model, version)
    return mv.tags.get(tracking.VERSION_PROMOTED_AT_TAG)


def test_promote_waits_for_the_lease_then_fails_naming_its_holder(
    pcfg: PipelineConfig, s3: Any
) -> None:
    old, new = _stand_in_run(pcfg), _stand_in_run(pcfg)
    assert registry.promote_if_better(pcfg, _won(old, None), s3=s3).version == "1"

    other = lease.acquire(pcfg, s3, f"promotion/{pcfg.registered_model}", "host-x:1:manual__x")
    with pytest.raises(lease.LeaseError, match="is held by host-x:1:manual__x until"):
        registry.promote_if_better(config.override(pcfg, lease_wait=1.0), _won(new, "1"), s3=s3)
    with pytest.raises(lease.LeaseError):
        registry.rollback(config.override(pcfg, lease_wait=0.0), s3=s3)
    assert _registry_state(pcfg) == ({"champion": "1"}, [("1", old)])  # nothing registered

    lease.release(pcfg, s3, other)
    done = registry.promote_if_better(pcfg, _won(new, "1"), s3=s3)
    assert (done.status, done.version, done.previous_version) == ("promoted", "2", "1")
    assert _lease_owners(pcfg, s3) == []


def test_promote_with_the_mlflow_server_stopped_fails_in_one_line_and_the_retry_finishes(
    cfg: PipelineConfig, s3: Any, s3_server: local_services.Service, tmp_path: Path
) -> None:
    """A real tracking server process of its own, stopped and started again (same port, same
    SQLite store, artifacts on the S3 server)."""

    def start(port: int | None = None) -> local_services.Service:
        return local_services.start_mlflow_server(
            tmp_path / "logs",
            backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            artifacts_destination=f"s3://{cfg.bucket}/mlflow",
            s3_endpoint_url=s3_server.url,
            port=port,
        )

    server = start()
    try:
        mcfg = config.override(
            cfg,
            mlflow_tracking_uri=server.url,
            registered_model="wc-restart",
            experiment_name="restart",
            mlflow_http_retries=1,
            mlflow_http_timeout=10,
        )
        tracking.configure_process(mcfg)
        old, new = _stand_in_run(mcfg), _stand_in_run(mcfg)
        assert registry.promote_if_better(mcfg, _won(old, None), s3=s3).version == "1"

        server.stop()
        started = time.monotonic()
        with pytest.raises(tracking.TrackingError) as err:
            with tracking.mlflow_errors(mcfg):  # as the CLI and the DAG's tasks wrap it
                registry.promote_if_better(mcfg, _won(new, "1"), s3=s3)
        print(f"MLflow down during promote, {time.monotonic() - started:.2f} s: {err.value}")
        assert err.value.transient and "\n" not in str(err.value)
        assert str(err.value) == (
            f"MLflow tracking server {server.url}: cannot connect (2 attempts): is it running "
            "and WEATHER_MLFLOW_TRACKING_URI right?"
        )
        assert _lease_owners(mcfg, s3) == []  # released on the way out: the retry need not wait

        server = start(port=int(server.url.rsplit(":", 1)[1]))
        assert _registry_state(mcfg) == ({"champion": "1"}, [("1", old)])  # champion unchanged
        retry = registry.promote_if_better(mcfg, _won(new, "1"), s3=s3)
        assert (retry.status, retry.version, retry.previous_version) == ("promoted", "2", "1")
        assert _registry_state(mcfg) == (
            {"champion": "2", "previous": "1"},
            [("1", old), ("2", new)],
        )
    finally:
        server.stop()


def test_promote_cut_off_from_mlflow_at_every_step_leaves_nothing_half_done(
    pcfg: PipelineConfig, s3: Any, mlflow_server: local_services.Service
) -> None:
    """The session's server behind a proxy that drops every connection from the n-th request
    of the promotion on, for each n: the failure is one transient line; what it leaves behind
    is the old champion or the finished move (previous first), at most with the new version
    registered without alias; the retry finishes: one version per run, champion new, previous
    old, the promotion time tagged.

    Every request of the registry moves is cut. Once a cut leaves the move finished and tagged,
    the requests left write the model card (most of the promotion's requests, all with that
    same registry state): of those, the first, the middle and the last are cut."""
    proxy = FlakyProxy(int(mlflow_server.url.rsplit(":", 1)[1]))
    try:
        via = config.override(pcfg, mlflow_tracking_uri=proxy.url)
        tracking.configure_process(via)
        old, new = _stand_in_run(via), _stand_in_run(via)

        def fresh(tag: str) -> PipelineConfig:
            c = config.override(via, registered_model=f"{pcfg.registered_model}-{tag}")
            assert registry.promote_if_better(c, _won(old, None), s3=s3).version == "1"
            return c

        counted = fresh("count")
        before = proxy.requests
        assert registry.promote_if_better(counted, _won(new, "1"), s3=s3).status == "promoted"
        steps = proxy.requests - before
        assert steps >= 5, steps  # reads, registration, two alias moves, tags

        left_behind = set()
        cuts, card_cuts = list(range(steps)), []
        while cuts:
            cut = cuts.pop(0)
            c = fresh(str(cut))
            proxy.die_after(cut)
            with pytest.raises(tracking.TrackingError) as err:
                with tracking.mlflow_errors(c):
                    registry.promote_if_better(c, _won(new, "1"), s3=s3)
            proxy.revive()
            assert err.value.transient and "\n" not in str(err.value)
            assert str(err.value).startswith(f"MLflow tracking server {proxy.url}: ")
            assert _lease_owners(c, s3) == []

            aliases, versions = _registry_state(c)
            assert versions in ([("1", old)], [("1", old), ("2", new)]), (cut, versions)
            assert aliases in (
                {"champion": "1"},
                {"champion": "1", "previous": "1"},
                {"champion": "2", "previous": "1"},
            ), (cut, aliases)
            if len(versions) == 2 and aliases["champion"] == "1":
                left_behind.add("v2 registered, aliases not moved")
            elif aliases["champion"] == "2":
                left_behind.add("moved, not yet tagged")
            print(f"cut before request {cut + 1}/{steps}: {aliases} {versions}: {err.value}")
            if not card_cuts and len(versions) == 2 and _promoted_at(c, "2") is not None:
                card_cuts = sorted({cut, (cut + steps) // 2, steps - 1})
                cuts = [n for n in cuts if n in card_cuts]

            retry = registry.promote_if_better(c, _won(new, "1"), s3=s3)
            assert retry.promoted and retry.version == "2", (cut, retry)
            assert _registry_state(c) == (
                {"champion": "2", "previous": "1"},
                [("1", old), ("2", new)],
            ), cut
            assert _promoted_at(c, "2") is not None, cut
        # The cuts that matter most were made, not just the early ones.
        assert left_behind == {"v2 registered, aliases not moved", "moved, not yet tagged"}
        assert card_cuts and card_cuts[-1] == steps - 1, card_cuts
    finally:
        proxy.close()


# --- two promotions at once ---------------------------------------------------------------------
def _promote_in_child(
    cfg: PipelineConfig,
    evaluation: dict[str, Any],
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.queues.Queue[dict[str, Any]],
) -> None:
    """One promoting process (spawned): everything imported first, then the barrier."""
    tracking.configure_process(cfg)
    try:
        barrier.wait(timeout=300)
        results.put(registry.promote_if_better(cfg, evaluation).as_dict())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put({"run_id": evaluation["run_id"], "status": f"error: {exc!r}"})


def test_two_promotions_at_once_make_exactly_one_champion(pcfg: PipelineConfig, s3: Any) -> None:
    old, a, b = _stand_in_run(pcfg), _stand_in_run(pcfg), _stand_in_run(pcfg)
    assert registry.promote_if_better(pcfg, _won(old, None), s3=s3).version == "1"
    racing = config.override(pcfg, lease_wait=300.0)

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    children = [
        ctx.Process(target=_promote_in_child, args=(racing, _won(run, "1"), barrier, results))
        for run in (a, b)
    ]
    for child in children:
        child.start()
    outcome = {r["run_id"]: r for r in (results.get(timeout=600) for _ in children)}
    for child in children:
        child.join(timeout=60)

    statuses = sorted(r["status"] for r in outcome.values())
    assert statuses == ["promoted", "refused_champion_changed"], outcome
    (winner,) = [run for run, r in outcome.items() if r["status"] == "promoted"]
    (loser,) = {a, b} - {winner}
    assert (outcome[winner]["version"], outcome[winner]["previous_version"]) == ("2", "1")
    # The loser read the champion after the winner had moved it: inside the lease, before
    # registering anything.
    assert "evaluated against v1, now v2" in outcome[loser]["reason"]
    assert _registry_state(pcfg) == (
        {"champion": "2", "previous": "1"},
        [("1", old), ("2", winner)],
    )
    assert _lease_owners(pcfg, s3) == []
