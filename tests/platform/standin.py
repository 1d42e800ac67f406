"""Stand-ins for the compose services that cannot exist in CI (no image registry).

Run in the project's mlflow image (it has psycopg2 and boto3) by tests/platform/
compose.test.yaml, under the real services' names, on the host network:

  postgres    creates the roles and the databases the real init script would, on the machine's
              PostgreSQL (127.0.0.1:5432), fresh for this run, then reports healthy
  redis       waits for the machine's Redis and empties the broker's database
  minio       waits for the project's S3 test server (STANDIN_S3_URL)
  minio-init  creates the buckets, as the real bucket job would, and exits

A stand-in that serves reports healthy by writing /tmp/ready, then sleeps until stopped.
"""

import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

DEADLINE = time.monotonic() + 120


def retry(what, check):
    """Call ``check`` until it returns without raising, for at most two minutes."""
    while True:
        try:
            return check()
        except Exception as exc:
            if time.monotonic() > DEADLINE:
                sys.exit(f"standin: {what} not reachable: {exc}")
            time.sleep(1)


def postgres():
    import psycopg2

    prefix = os.environ["STANDIN_DB_PREFIX"]
    conn = retry("PostgreSQL", lambda: psycopg2.connect(host="127.0.0.1", user="postgres",
                                                         dbname="postgres"))
    conn.autocommit = True
    cur = conn.cursor()
    roles = {"airflow": os.environ["AIRFLOW_DB_PASSWORD"],
             "mlflow": os.environ["MLFLOW_DB_PASSWORD"]}
    for role, password in roles.items():
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(f"{verb} ROLE {role} LOGIN PASSWORD %s", (password,))
    for db, owner in (("airflow", "airflow"), ("mlflow", "mlflow"), ("mlflow_auth", "mlflow")):
        cur.execute(f'DROP DATABASE IF EXISTS "{prefix}{db}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{prefix}{db}" OWNER {owner}')
    print(f"standin postgres: databases {prefix}airflow, {prefix}mlflow, {prefix}mlflow_auth")


def redis():
    db = os.environ["STANDIN_REDIS_DB"]

    def flush():
        with socket.create_connection(("127.0.0.1", 6379), timeout=5) as s:
            s.sendall(f"SELECT {db}\r\nFLUSHDB\r\n".encode())
            reply = s.recv(64)
            if reply.count(b"+OK") < 2:
                raise RuntimeError(f"Redis answered {reply!r}")

    retry("Redis", flush)
    print(f"standin redis: 127.0.0.1:6379 database {db} emptied")


def minio():
    url = os.environ["STANDIN_S3_URL"]
    retry("the S3 test server", lambda: urllib.request.urlopen(url + "/moto-api/", timeout=5))
    print(f"standin minio: the S3 test server answers at {url}")


def minio_init():
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["STANDIN_S3_URL"],
                      aws_access_key_id=os.environ["MINIO_ROOT_USER"],
                      aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"],
                      region_name="us-east-1")
    for bucket in (os.environ["WEATHER_BUCKET"], os.environ["MLFLOW_BUCKET"]):
        retry(f"bucket {bucket}", lambda b=bucket: s3.create_bucket(Bucket=b))
    s3.put_bucket_versioning(Bucket=os.environ["WEATHER_BUCKET"],
                             VersioningConfiguration={"Status": "Enabled"})
    print("standin minio-init: buckets created")


if __name__ == "__main__":
    role = sys.argv[1]
    {"postgres": postgres, "redis": redis, "minio": minio, "minio-init": minio_init}[role]()
    if role != "minio-init":
        Path("/tmp/ready").touch()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
