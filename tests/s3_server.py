"""A local S3 server for the tests: moto's server mode on a free loopback port, stopped by PID."""

from __future__ import annotations

import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import boto3

from apiinone.launcher import free_port, wait_tcp
from tests.gateway_helpers import stop

CREDENTIALS = {"aws_access_key_id": "test-key", "aws_secret_access_key": "test-secret"}
REGION = "us-east-1"


@contextmanager
def s3_server() -> Iterator[str]:
    """The endpoint URL of a fresh moto S3 server."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(port, 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, 5)  # SIGTERM, then SIGKILL


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)


def new_bucket(endpoint: str) -> str:
    name = "apiinone-" + uuid.uuid4().hex[:12]
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def stack_env(endpoint: str, bucket: str) -> dict[str, str]:
    """The settings that point every process of a stack at this bucket."""
    return {"APIINONE_BLOB_STORE": "s3", "APIINONE_S3_ENDPOINT": endpoint, "APIINONE_S3_BUCKET": bucket,
            "APIINONE_S3_REGION": REGION, "APIINONE_S3_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "APIINONE_S3_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}
