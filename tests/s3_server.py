"""A real S3-compatible server for the tests: moto's standalone server in its own process, on a loopback port.

Run as a script it serves moto's S3 app (what ``python -m moto.server`` serves) with one change: requests are
handled one at a time. moto checks ``If-None-Match`` / ``If-Match`` and then stores the object in two steps,
so its threaded server lets two concurrent conditional creates of one key both succeed now and then (seen
here: 1 round in 200 of 16 writers racing); S3 itself decides them atomically. Serialising the requests
gives the tests S3's semantics.

Example:
    >>> server = S3Server().start()  # doctest: +SKIP
    >>> bucket = server.new_bucket("registry")  # doctest: +SKIP
    >>> server.env()["AWS_ENDPOINT_URL"]  # doctest: +SKIP
    'http://127.0.0.1:40123'
    >>> server.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

#: The fixed test credentials (moto accepts any).
ACCESS_KEY = "shoeseg-test-key"
SECRET_KEY = "shoeseg-test-secret"
REGION = "us-east-1"

_bucket_numbers = itertools.count(1)


def aws_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point boto3 (and nothing else) at ``endpoint``, with no ~/.aws files."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class S3Server:
    """moto's S3 server as a child process (see the module docstring)."""

    port: int = 0
    log_path: Path | None = None
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """``host:port``, as ``SHOESEG_ALLOWED_HOSTS`` names it."""
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return aws_env(self.endpoint)

    def start(self, timeout_s: float = 60.0) -> S3Server:
        from shoeseg_app.stack.service import free_port

        self.port = self.port or free_port()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen([sys.executable, __file__, "--port", str(self.port)], stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if self.log_path:
                out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the moto S3 server exited with {self._proc.returncode}")
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the moto S3 server did not answer on {self.endpoint} in {timeout_s:g} s")

    def stop(self) -> None:
        from shoeseg_services.processes import stop_process_group

        if self._proc is not None:
            stop_process_group(self._proc, timeout_s=10)

    def client(self):
        """A boto3 client of this server (for the tests' own setup, independent of the environment)."""
        import boto3

        return boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                     region_name=REGION).client("s3", endpoint_url=self.endpoint)

    def new_bucket(self, name: str = "shoeseg") -> str:
        """A new, empty bucket of this session (a unique name per call)."""
        bucket = f"{name}-{os.getpid()}-{next(_bucket_numbers)}"
        self.client().create_bucket(Bucket=bucket)
        return bucket


def _serve(port: int) -> None:
    import threading

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    os.environ["MOTO_PORT"] = str(port)  # as moto's own server sets it
    app = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serialised(environ, start_response):
        with one_at_a_time:
            return list(app(environ, start_response))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple("127.0.0.1", port, serialised, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    _serve(parser.parse_args().port)
