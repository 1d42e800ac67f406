"""The serving endpoint's pure parts: request parsing, sampling, the prediction log's format."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

import pytest

from weather_tasks import endpoint
from weather_tasks.endpoint import RequestError, parse_invocation

JSON = "application/json"
A, B = b"\x89PNG first", b"\xff\xd8 second"
A64, B64 = base64.b64encode(A).decode(), base64.b64encode(B).decode()


def _body(payload: object) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize("payload", [
    {"dataframe_split": {"columns": ["image"], "data": [[A64], [B64]]}},
    {"dataframe_split": {"columns": ["image"], "index": [0, 1], "data": [[A64], [B64]]}},
    {"dataframe_records": [{"image": A64}, {"image": B64}]},
    {"inputs": {"image": [A64, B64]}},
    {"instances": [{"image": A64}, {"image": B64}]},
    {"instances": [{"image": {"b64": A64}}, {"image": {"b64": B64}}]},
    {"inputs": {"image": [A64, B64]}, "params": {"ignored": 1}},
])
def test_every_mlflow_json_format_gives_the_image_bytes(payload: object) -> None:
    parsed = parse_invocation(_body(payload), "application/json; charset=utf-8")
    assert parsed.images == (A, B) and parsed.errors == (None, None)


def test_a_value_that_is_no_image_is_a_row_error_not_a_refused_request() -> None:
    parsed = parse_invocation(
        _body({"dataframe_records": [{"image": A64}, {"image": 7}, {"image": None},
                                     {"image": "abc"}]}), JSON)
    assert parsed.images[0] == A and parsed.errors[0] is None
    assert parsed.images[2] is None and parsed.errors[2] is None  # null: the model says empty
    assert "got int" in (parsed.errors[1] or "")
    assert "not base64" in (parsed.errors[3] or "")  # bad padding


@pytest.mark.parametrize(("body", "content_type", "status", "reason"), [
    (b"", JSON, 400, "empty request body"),
    (b"   \n", JSON, 400, "empty request body"),
    (b"{not json", JSON, 400, "not valid JSON"),
    (b"\xff\xfe", JSON, 400, "not valid JSON"),
    (_body([{"image": A64}]), JSON, 400, "expected a JSON object"),
    (_body({"data": [[A64]]}), JSON, 400, "expected exactly one of"),
    (_body({"inputs": {"image": [A64]}, "instances": [{"image": A64}]}), JSON, 400,
     "expected exactly one of"),
    (_body({"inputs": {"image": [A64]}, "extra": 1}), JSON, 400, "unexpected keys"),
    (_body({"dataframe_split": {"columns": ["image"]}}), JSON, 400, "'data'"),
    (_body({"dataframe_split": {"columns": ["image"], "data": [[A64, "x"]]}}), JSON, 400,
     "list of one value"),
    (_body({"dataframe_split": {"columns": [], "data": []}}), JSON, 400, "got columns []"),
    (_body({"dataframe_records": {"image": A64}}), JSON, 400, "must be a list"),
    (_body({"dataframe_records": ["x"]}), JSON, 400, "must be an object"),
    (_body({"inputs": {"img": [A64]}}), JSON, 400, "got columns ['img']"),
    (_body({"inputs": {"image": [A64]}}), "text/csv", 415, "application/json"),
    (_body({"inputs": {"image": [A64]}}), None, 415, "application/json"),
    (_body({"inputs": {"image": [A64]}}), "application/json; charset=latin-1", 415, "UTF-8"),
])
def test_malformed_requests_are_refused_with_a_reason(
    body: bytes, content_type: str | None, status: int, reason: str
) -> None:
    with pytest.raises(RequestError) as info:
        parse_invocation(body, content_type)
    assert info.value.status == status
    assert reason in info.value.reason


@pytest.mark.parametrize("payload", [
    {"dataframe_split": {"columns": ["path"], "data": [["/etc/passwd"]]}},
    {"dataframe_split": {"columns": ["image", "path"], "data": [[A64, "/etc/passwd"]]}},
    {"dataframe_records": [{"path": "/etc/passwd"}]},
    {"dataframe_records": [{"image": A64}, {"image": A64, "path": "/x.jpg"}]},
    {"inputs": {"path": ["/etc/passwd"]}},
    {"instances": [{"path": "/etc/passwd"}]},
])
def test_a_path_column_is_refused_whatever_the_format(payload: object) -> None:
    """Older versions' signatures still list ``path``: the endpoint refuses it itself."""
    with pytest.raises(RequestError, match="reads no files") as info:
        parse_invocation(_body(payload), JSON)
    assert info.value.status == 400 and "path" in info.value.reason


@pytest.mark.parametrize(("rate", "draws", "expected"), [
    (0.0, [0.0], False),
    (1.0, [0.999], True),
    (0.25, [0.1], True),
    (0.25, [0.25], False),
    (0.25, [0.9], False),
])
def test_sampling(rate: float, draws: list[float], expected: bool) -> None:
    assert endpoint.sampled(rate, iter(draws).__next__) is expected


def test_the_prediction_record_holds_hashes_never_images() -> None:
    when = dt.datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=dt.UTC)
    rows = [
        {"label": "rain", "prob_rain": 0.9, "prob_shine": 0.1, "error": None, "error_code": None},
        {"label": None, "prob_rain": None, "prob_shine": None, "error": "cannot identify",
         "error_code": "undecodable"},
        {"label": None, "prob_rain": None, "prob_shine": None, "error": "no image",
         "error_code": "empty"},
    ]
    record = endpoint.prediction_record(when, "4", [A, b"junk", None], rows)
    assert record == {
        "time": "2025-03-04T05:06:07.890+00:00", "model_version": "4",
        "rows": [
            {"sha256": hashlib.sha256(A).hexdigest(), "label": "rain",
             "probabilities": {"rain": 0.9, "shine": 0.1}, "error_code": None},
            {"sha256": hashlib.sha256(b"junk").hexdigest(), "label": None,
             "probabilities": None, "error_code": "undecodable"},
            {"sha256": None, "label": None, "probabilities": None, "error_code": "empty"},
        ],
    }
    text = json.dumps(record)
    assert A64 not in text and "first" not in text


def test_log_keys_are_per_day_and_never_collide() -> None:
    when = dt.datetime(2025, 3, 4, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    key = endpoint.log_key("predictions/", when, "web 1/a", 3)
    assert key == "predictions/2025-03-05/web_1_a-20250305T015959-000003.jsonl"  # UTC day
    assert endpoint.log_key("predictions/", when, "web", 4) != endpoint.log_key(
        "predictions/", when, "web", 3)


class _FailingS3:
    def put_object(self, **kwargs: object) -> None:
        raise OSError("connection refused")


class _MemoryS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **kwargs: object) -> None:  # noqa: N803
        self.objects[Key] = Body


def test_a_failing_bucket_keeps_the_records_for_the_next_flush() -> None:
    from weather_tasks import config

    cfg = config.from_env(environ={})
    log = endpoint.PredictionLog(cfg, _FailingS3(), host="h")
    log.add({"n": 1})
    assert log.flush() is None  # logged, not raised
    log._s3 = _MemoryS3()
    key = log.flush()
    assert key is not None and key.startswith("predictions/")
    assert log._s3.objects[key] == b'{"n": 1}\n'
    assert log.flush() is None  # nothing left
