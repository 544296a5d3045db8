"""
A real S3-compatible server for tests: moto's S3 served over HTTP on 127.0.0.1, and an Airflow
``aws`` connection pointing at it, so that ``ObjectStoragePath("s3://BUCKET/key", conn_id=ID)``
goes the way it goes in production: Airflow's object storage asks the Amazon provider for the
``s3`` filesystem, the provider builds an ``s3fs.S3FileSystem`` from the connection (keys,
``endpoint_url``, region), and s3fs speaks S3 over HTTP to the server.

The server is moto's ``ThreadedMotoServer`` (a werkzeug server in a daemon thread of this
process) on a port the kernel picks. Nothing is mocked in-process: every call is a real HTTP
request to the loopback address. Moto keeps its S3 state per process, not per server, so each
:func:`s3_server` makes a bucket of its own with a unique name and a connection of its own with a
unique id (Airflow caches a filesystem per protocol and connection id), and removes the bucket
when it ends.

What it needs is in the dev extra (:data:`REQUIRED`); :func:`missing_packages` names what is not
installed. Importing this module imports neither moto nor Airflow.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: The distributions this helper needs, each with the dev-extra requirement that installs it.
REQUIRED: dict[str, str] = {
    # The S3-compatible server: moto's S3 backend (the s3 extra adds its PyYAML and partiql parser)...
    "moto": "moto[s3]",
    # ...served by moto's werkzeug app, which imports Flask and flask-cors (moto's "server" extra
    # would bring every AWS service's dependencies, cfn-lint and docker among them).
    "flask": "flask",
    "flask-cors": "flask-cors",
    # Airflow's s3:// filesystem (airflow.providers.amazon.aws.fs.s3), which reads the connection.
    "apache-airflow-providers-amazon": "apache-airflow-providers-amazon[s3fs]",
    # What that filesystem is: the provider's s3fs extra.
    "s3fs": "apache-airflow-providers-amazon[s3fs]",
}

#: Region of the connection and of the bucket.
REGION = "us-east-1"
#: Any keys do: moto checks the signature's form, not the keys.
ACCESS_KEY = "banana-test-access-key"
SECRET_KEY = "banana-test-secret-key"

#: Set while a server runs: with no network here, nothing may make botocore look elsewhere for
#: credentials, region or endpoint (the EC2 instance-metadata endpoint, a container credentials
#: endpoint, ~/.aws files, a profile) nor send loopback traffic to a proxy. ``None`` unsets.
AWS_ENVIRONMENT: dict[str, str | None] = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_PROFILE": None,
    "AWS_DEFAULT_PROFILE": None,
    "AWS_ENDPOINT_URL": None,
    "AWS_ENDPOINT_URL_S3": None,
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_ROLE_ARN": None,
    "AWS_WEB_IDENTITY_TOKEN_FILE": None,
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
}


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server with one empty bucket and a connection to it."""

    #: ``http://127.0.0.1:PORT``.
    endpoint_url: str
    #: The bucket made for this server.
    bucket: str
    #: The Airflow connection (``AIRFLOW_CONN_<ID>``) that reaches it.
    conn_id: str
    #: Seconds from the call to a started server with its bucket (moto's import included).
    start_seconds: float

    @property
    def base_uri(self) -> str:
        """``s3://BUCKET``: join keys to it with ``/``."""
        return f"s3://{self.bucket}"


def missing_packages() -> list[str]:
    """Return the dev-extra requirements not installed (none: all is there), without importing them."""
    missing: list[str] = []
    for distribution, requirement in REQUIRED.items():
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            if requirement not in missing:
                missing.append(requirement)
    return missing


def connection_json(endpoint_url: str) -> str:
    """Return an ``AIRFLOW_CONN_*`` value (JSON form) for an ``aws`` connection to ``endpoint_url``."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
        }
    )


@contextlib.contextmanager
def patched_environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for ``None``, unset) environment variables, and restore them all afterwards."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _no_proxy_with_loopback() -> dict[str, str | None]:
    hosts = [host for host in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if host]
    for host in ("127.0.0.1", "localhost"):
        if host not in hosts:
            hosts.append(host)
    value = ",".join(hosts)
    return {"NO_PROXY": value, "no_proxy": value}


def _client(endpoint_url: str) -> Any:
    """A plain boto3 S3 client for the fixture's own bookkeeping (the bucket), not for the tests."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 1}),
    )


def _remove_bucket(client: Any, bucket: str) -> None:
    """Delete the bucket's objects, unfinished multipart uploads, and the bucket."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """Run an S3-compatible server on 127.0.0.1 with one empty bucket and a connection to it.

    While it runs, ``AIRFLOW_CONN_<conn_id>`` names the server and :data:`AWS_ENVIRONMENT` is
    in force; both are restored, the bucket removed and the server stopped when it ends.

    :raises RuntimeError: if a package it needs is not installed (the message names them).
    """
    missing = missing_packages()
    if missing:
        raise RuntimeError(
            "the S3 tests need " + ", ".join(missing) + " (the dev extra has them: pip install -e '.[dev]')"
        )
    started = time.monotonic()
    from moto.server import ThreadedMotoServer

    token = uuid.uuid4().hex[:12]
    bucket = f"banana-test-{token}"
    conn_id = f"s3_test_{token}"
    # Port 0: the kernel picks a free port at bind time, so no other process can take it first
    # (and ThreadedMotoServer.start() would wait forever on a server that failed to bind).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        environment = {**AWS_ENVIRONMENT, **_no_proxy_with_loopback()}
        environment[f"AIRFLOW_CONN_{conn_id.upper()}"] = connection_json(endpoint_url)
        with patched_environ(environment):
            client = _client(endpoint_url)
            client.create_bucket(Bucket=bucket)
            try:
                yield S3Server(
                    endpoint_url=endpoint_url,
                    bucket=bucket,
                    conn_id=conn_id,
                    start_seconds=time.monotonic() - started,
                )
            finally:
                _remove_bucket(client, bucket)
                client.close()
    finally:
        server.stop()
        # stop() ends serve_forever() but leaves the listening socket open.
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()
