"""The S3 client every stage uses: bounded connection pool, retries with backoff.

botocore's "standard" retry mode retries throttling, 5xx and connection errors with
exponential backoff and jitter; we only choose how many attempts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from weather_tasks.config import PipelineConfig

if TYPE_CHECKING:  # the stubs (boto3-stubs[s3]) are a development dependency
    from mypy_boto3_s3 import S3Client


def make_client(cfg: PipelineConfig, session: boto3.session.Session | None = None) -> S3Client:
    """A boto3 S3 client for ``cfg``.

    Credentials come from ``session`` (in Airflow: the ``aws`` connection's boto3 session)
    or else from the standard AWS chain.
    """
    return (session or boto3.session.Session()).client(
        "s3",
        endpoint_url=cfg.s3_endpoint_url,
        region_name=cfg.s3_region,
        config=Config(
            retries={"max_attempts": cfg.s3_max_attempts, "mode": "standard"},
            max_pool_connections=max(10, cfg.parallelism * 2),
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def get_json(s3: S3Client, bucket: str, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def put_json(s3: S3Client, bucket: str, key: str, value: Any) -> None:
    body = json.dumps(value, indent=1, sort_keys=True).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
