"""
Real Airflow components on a throwaway home for the tests: api-server, scheduler, dag-processor and triggerer.

The runner itself lives in :mod:`benchmarks.components`, one copy that the benchmarks and the
tests share (the benchmarks never import ``tests``); the tests import it from here, beside the
helpers only they need. Used by ``tests/test_real_components.py``, ``tests/test_large_outputs.py``,
``tests/test_connection_form.py`` and ``tests/production.py``. Nothing here imports pytest or the
test configuration: a failure raises :class:`ComponentError` (an ``AssertionError``, which pytest
reports as a test failure) carrying the end of every log.
"""

from __future__ import annotations

import psutil

from benchmarks.components import (
    LOG_TIMEOUT,
    RUN_TIMEOUT,
    STARTUP_TIMEOUT,
    TERMINAL_TASK_STATES,
    AirflowComponents,
    ComponentError,
    airflow_env,
    log_records,
    processes_using,
    started,
    stop_and_reap,
    tail,
    wait_until_served,
)

__all__ = [
    "LOG_TIMEOUT",
    "RUN_TIMEOUT",
    "STARTUP_TIMEOUT",
    "TERMINAL_TASK_STATES",
    "AirflowComponents",
    "ComponentError",
    "airflow_env",
    "log_records",
    "processes_titled",
    "processes_using",
    "started",
    "stop_and_reap",
    "tail",
    "wait_until_served",
]


def processes_titled(title: str) -> list[psutil.Process]:
    """Return the running processes whose command line (or title set by setproctitle) contains ``title``."""
    found = []
    for process in psutil.process_iter():
        try:
            if title in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found
