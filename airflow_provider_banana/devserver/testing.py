"""Run a devserver in a subprocess for tests and benchmarks, and drive its admin API.

Standard library only, so that importing it costs nothing::

    with DevServer(start_hold=2, check_hold=2) as srv:
        requests.post(srv.url + "start/v4/", json={...})
        srv.faults(fail_next={"count": 1, "status": 503, "retry_after": 1})
        assert srv.stats()["starts_taken"] == 1
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_provider_banana.devserver.config import ADMIN_TOKEN_ENV_VAR, API_KEY_ENV_VAR

_LISTENING = re.compile(r"Banana devserver listening on http://[^\s:]+:(\d+)")
# Admin calls bypass any proxy from the environment: the server is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class DevServerError(RuntimeError):
    """The devserver did not start, died, or an admin call failed."""


class DevServer:
    """Start a devserver subprocess on 127.0.0.1 and stop it on exit.

    :param start_hold: seconds a Start without ``startOnly`` waits for the result.
    :param check_hold: seconds a long-poll Check is held.
    :param result_ttl: seconds finished results are kept.
    :param replicas: calls of one model running at once.
    :param quirk_empty_message: answer finished Starts with empty ``message`` and ``callID``.
    :param api_key: require this apiKey (passed through the environment, never argv).
    :param models: external model servers, modelKey to the URL the inputs are POSTed to.
    :param model_concurrency: ``--model-concurrency``: requests each external model server gets
        at once (an int for all of them, or modelKey to int); None keeps the server's default of 1.
    :param log_level: the server's log level.
    :param extra_args: further command-line arguments.
    :param startup_timeout: seconds to wait for the server to answer its healthcheck.
    :param port: port to bind; None picks a free one on first start.
    :param admin_token: require this bearer token on the admin API (passed through the
        environment, never argv) and send it with every admin call; None leaves the admin
        API open, as it is on loopback.
    """

    def __init__(
        self,
        start_hold: float = 2.0,
        check_hold: float = 2.0,
        result_ttl: float = 600.0,
        replicas: int = 32,
        quirk_empty_message: bool = False,
        api_key: str | None = None,
        models: Mapping[str, str] | None = None,
        *,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
        port: int | None = None,
        admin_token: str | None = None,
        model_concurrency: int | Mapping[str, int] | None = None,
    ) -> None:
        if api_key is not None and not api_key:
            raise ValueError("api_key must not be empty")
        if admin_token is not None and not admin_token:
            raise ValueError("admin_token must not be empty")
        self._args = [
            "--host",
            "127.0.0.1",
            "--start-hold",
            str(start_hold),
            "--check-hold",
            str(check_hold),
            "--result-ttl",
            str(result_ttl),
            "--replicas",
            str(replicas),
            "--log-level",
            log_level,
        ]
        if quirk_empty_message:
            self._args.append("--quirk-empty-message")
        if api_key is not None:
            self._args.append("--require-api-key")
        for key, url in (models or {}).items():
            self._args += ["--model", f"{key}={url}"]
        if isinstance(model_concurrency, int):
            self._args += ["--model-concurrency", str(model_concurrency)]
        elif model_concurrency is not None:
            for key, limit in model_concurrency.items():
                self._args += ["--model-concurrency", f"{key}={limit}"]
        self._args += list(extra_args)
        self._api_key = api_key
        self._admin_token = admin_token
        self._startup_timeout = startup_timeout
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._log_dir: str | None = None
        self._log_dir_finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._port is None:
            raise DevServerError("the devserver has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, with a trailing slash: ``http://127.0.0.1:PORT/``."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        """The server process's id."""
        if self._process is None:
            raise DevServerError("the devserver is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> DevServer:
        try:
            self.start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Launch the server and wait until it answers its healthcheck.

        :raises DevServerError: if it exits or does not answer within the startup timeout.
        """
        if self.running:
            raise DevServerError("the devserver is already running")
        if self._log_dir is None:
            self._log_dir = tempfile.mkdtemp(prefix="banana-devserver-")
            # Removes the log at interpreter exit even if nobody called close().
            self._log_dir_finalizer = weakref.finalize(self, shutil.rmtree, self._log_dir, ignore_errors=True)
        env = dict(os.environ)
        env.pop(API_KEY_ENV_VAR, None)
        if self._api_key is not None:
            env[API_KEY_ENV_VAR] = self._api_key
        # Dropped unless asked for, so that a token in the caller's environment changes nothing.
        env.pop(ADMIN_TOKEN_ENV_VAR, None)
        if self._admin_token is not None:
            env[ADMIN_TOKEN_ENV_VAR] = self._admin_token
        env["PYTHONUNBUFFERED"] = "1"
        # Importable even when the package is only a source checkout, not installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "airflow_provider_banana.devserver",
            *self._args,
            "--port",
            str(self._port or 0),
        ]
        log_path = self._log_path()
        offset = log_path.stat().st_size if log_path.exists() else 0
        # A file, not a pipe: nobody reads a pipe during a test, and a full one blocks the server.
        with open(log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        # Kills the server at interpreter exit even if nobody called stop().
        self._finalizer = weakref.finalize(self, _kill, self._process)
        try:
            self._port = self._await_listening(offset)
            self._await_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it has not exited within ``timeout``.

        :param timeout: seconds to wait after SIGTERM.
        """
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(process)

    def restart(self) -> None:
        """Stop and start again on the same port; every call is lost, as in a real restart."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its log."""
        self.stop()
        if self._log_dir_finalizer is not None:
            self._log_dir_finalizer()
            self._log_dir_finalizer = None
        self._log_dir = None

    def log_text(self) -> str:
        """Return everything the server printed so far, across restarts."""
        if self._log_dir is None:
            return ""
        try:
            return self._log_path().read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stats(self) -> dict[str, Any]:
        """Return the server's counters (``GET /_admin/stats``)."""
        result: dict[str, Any] = self._admin("GET", "stats")
        return result

    def reset(self, forget_calls: bool = False) -> None:
        """Zero the counters, disarm faults and restore the launch settings.

        :param forget_calls: also drop every call and result.
        """
        self._admin("POST", "reset", {"forget_calls": forget_calls})

    def forget(self) -> int:
        """Drop every call and result now.

        :return: how many calls were dropped.
        """
        return int(self._admin("POST", "forget")["forgotten"])

    def faults(self, **spec: Any) -> dict[str, Any]:
        """Arm fault switches, e.g. ``faults(fail_next={"count": 1, "status": 503})``.

        :param spec: switch name to settings (None disarms); ``quirk_empty_message=True`` too.
        :return: the armed switches.
        """
        result: dict[str, Any] = self._admin("POST", "faults", spec)
        return result

    def settings(self, **changes: Any) -> dict[str, Any]:
        """Change run-time settings: ``start_hold``, ``check_hold``, ``result_ttl``, ``quirk_empty_message``.

        :param changes: setting name to new value; none just reads them.
        :return: the settings now in force.
        """
        result: dict[str, Any] = self._admin("POST", "settings", changes)
        return result

    def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0, interval: float = 0.05
    ) -> dict[str, Any]:
        """Poll the stats until ``predicate`` holds.

        :param predicate: test on the stats dict.
        :param timeout: seconds to wait at most.
        :param interval: seconds between polls.
        :return: the stats that satisfied the predicate.
        :raises TimeoutError: with the last stats, if it never held.
        """
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() >= deadline:
                raise TimeoutError(f"stats never matched within {timeout}s; last: {stats}")
            time.sleep(interval)

    def _log_path(self) -> Path:
        if self._log_dir is None:
            raise DevServerError("the devserver has no log directory")
        return Path(self._log_dir) / "devserver.log"

    def _await_listening(self, offset: int) -> int:
        deadline = time.monotonic() + self._startup_timeout
        log_path = self._log_path()
        while time.monotonic() < deadline:
            with open(log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            match = _LISTENING.search(text)
            if match:
                return int(match.group(1))
            if self._process is None or self._process.poll() is not None:
                raise DevServerError(f"the devserver exited during startup; its output:\n{text}")
            time.sleep(0.02)
        raise DevServerError(
            f"the devserver did not start within {self._startup_timeout}s; its output:\n{self.log_text()}"
        )

    def _await_healthy(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            try:
                with _OPENER.open(f"{self.url}healthcheck", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() >= deadline or not self.running:
                raise DevServerError(f"the devserver never answered its healthcheck:\n{self.log_text()}")
            time.sleep(0.05)

    def _admin(self, method: str, name: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._admin_token is not None:
            headers["Authorization"] = f"Bearer {self._admin_token}"
        request = urllib.request.Request(f"{self.url}_admin/{name}", data=data, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise DevServerError(f"admin {name} failed: HTTP {e.code}: {e.read()[:500]!r}") from e
        except OSError as e:
            raise DevServerError(f"admin {name} failed: {e}") from e


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
