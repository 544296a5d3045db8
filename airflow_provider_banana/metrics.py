"""
Send the provider's metrics through Airflow's own metrics facade (StatsD, Datadog or OpenTelemetry).

Every metric name, its type and the moment it is sent are in :data:`METRICS`; the rest of the
package calls the small functions here and never the facade. Airflow adds its ``[metrics]``
``statsd_prefix`` (``airflow`` by default) in front of each name. Tags are the connection id and
the model key only: never the API key, the inputs or a call id (an id per call would make a
series per call).

Where no facade can be imported, nothing is sent; sending never raises into the caller, since
a metric must not fail an inference that is paid for.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from airflow_provider_banana.exceptions import BananaTimeoutError

__all__ = [
    "METRICS",
    "Metric",
    "Tags",
    "count",
    "counts_timeouts",
    "operator_tags",
    "timing",
]

_log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Metric:
    """
    One metric the provider sends.

    :param name: the name, without Airflow's prefix.
    :param kind: ``counter`` or ``timer`` (milliseconds).
    :param tags: the tags it carries where the facade supports tags.
    :param when: when it is sent (the docs' table says the same).
    """

    name: str
    kind: str
    tags: tuple[str, ...]
    when: str


_CONN = ("conn_id",)
_CONN_MODEL = ("conn_id", "model_key")

START_SENT = Metric("banana.start.sent", "counter", _CONN_MODEL, "each Start request sent, a re-sent one included")
START_RETRIED = Metric(
    "banana.start.retried",
    "counter",
    _CONN_MODEL,
    "a Start sent again because the one before provably was not taken (refused, or no connection)",
)
START_UNANSWERED = Metric(
    "banana.start.unanswered",
    "counter",
    _CONN_MODEL,
    "a Start that may have been taken (and billed) without an answer: a lost answer, a 5xx other than a refusal",
)
START_DURATION = Metric(
    "banana.start.duration",
    "timer",
    _CONN_MODEL,
    "a Start's own round trip, when the server took it and answered (not a refused one)",
)
CHECK_SENT = Metric("banana.check.sent", "counter", _CONN, "each Check request sent, a retried one included")
CALL_FAILED = Metric("banana.call.failed", "counter", _CONN, "a reply says the call failed")
CALL_TIMEOUT = Metric(
    "banana.call.timeout", "counter", _CONN_MODEL, "a task fails because its call (or batch) passed its timeout"
)
CALL_DURATION = Metric(
    "banana.call.duration",
    "timer",
    _CONN,
    "a single call's time from Start to result: when its Start or a Check brings the outputs",
)
CALL_REATTACHED = Metric(
    "banana.call.reattached",
    "counter",
    _CONN_MODEL,
    "a retried task takes up its earlier try's call instead of paying again",
)
BATCH_INPUT_FINISHED = Metric("banana.batch.input.finished", "counter", _CONN_MODEL, "a batch input's call finished")
BATCH_INPUT_FAILED = Metric(
    "banana.batch.input.failed", "counter", _CONN_MODEL, "a batch input failed for good (after its retries)"
)

#: Every metric the provider sends, in the docs' order.
METRICS: tuple[Metric, ...] = (
    START_SENT,
    START_RETRIED,
    START_UNANSWERED,
    START_DURATION,
    CHECK_SENT,
    CALL_FAILED,
    CALL_TIMEOUT,
    CALL_DURATION,
    CALL_REATTACHED,
    BATCH_INPUT_FINISHED,
    BATCH_INPUT_FAILED,
)


#: Where Airflow's metrics facade is, newest first: the Task SDK's (Airflow 3.2 and 3.3; 3.3's
#: ``airflow.stats`` warns), then ``airflow.stats`` (3.1). Each is the one Airflow itself configures
#: from ``[metrics]`` in task processes and the triggerer.
_FACADES = ("airflow.sdk.observability.stats", "airflow.stats")


@functools.cache
def _facade() -> Any:
    for module_name in _FACADES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        # Airflow 3.1 and 3.2 have a Stats class; 3.3 has module functions, and Stats delegating to them.
        return getattr(module, "Stats", module)
    return None


@dataclass(frozen=True)
class Tags:
    """
    The tags of a metric; each metric sends those its :attr:`Metric.tags` name, when set.

    :param conn_id: the Banana connection id.
    :param model_key: the model key (unknown to a Check, which names only its call).
    """

    conn_id: str | None
    model_key: str | None = None

    def of(self, metric: Metric) -> dict[str, str]:
        """
        Return the tags ``metric`` sends.

        :param metric: one of :data:`METRICS`.
        """
        values = {"conn_id": self.conn_id, "model_key": self.model_key}
        return {name: str(values[name]) for name in metric.tags if values.get(name)}


def count(metric: Metric, tags: Tags, *, n: int = 1) -> None:
    """
    Add ``n`` to a counter.

    :param metric: one of :data:`METRICS`, a counter.
    :param tags: the connection id and model key.
    :param n: how much to add; nothing is sent for 0.
    """
    facade = _facade()
    if facade is None or n <= 0:
        return
    try:
        facade.incr(metric.name, n, tags=tags.of(metric))
    except Exception:  # a metric never fails a paid call
        _log.debug("Could not send metric %s", metric.name, exc_info=True)


def timing(metric: Metric, seconds: float, tags: Tags) -> None:
    """
    Send a timer's value.

    :param metric: one of :data:`METRICS`, a timer.
    :param seconds: the time measured; sent in milliseconds, as StatsD timers are.
    :param tags: the connection id and model key.
    """
    facade = _facade()
    if facade is None:
        return
    try:
        facade.timing(metric.name, max(seconds, 0.0) * 1000.0, tags=tags.of(metric))
    except Exception:  # a metric never fails a paid call
        _log.debug("Could not send metric %s", metric.name, exc_info=True)


def operator_tags(operator: Any) -> Tags:
    """
    Return the tags of an operator's metrics: its connection id and model key.

    :param operator: a Banana operator (``banana_conn_id``, ``model_key``, ``hook``).
    """
    model_key = getattr(operator, "model_key", None)
    if not model_key:
        try:  # the connection's default model; the task has looked it up already by now
            model_key = operator.hook.settings.model_key
        except Exception:  # a bad connection fails the task on its own; the metric goes untagged
            model_key = None
    return Tags(getattr(operator, "banana_conn_id", None), model_key)


def counts_timeouts(method: F) -> F:
    """
    Count a :class:`BananaTimeoutError` leaving an operator method (``execute``, ``resume_execution``).

    The timeout is counted where it fails the task, once, whichever way the wait ran (in the worker,
    the triggerer's event, Airflow's deferral backstop); a wait that merely hands over to the
    triggerer (``defer_after``) is not a timeout and never leaves the operator.

    :param method: the operator's method; its ``self`` has ``banana_conn_id`` and ``model_key``.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except BananaTimeoutError:
            count(CALL_TIMEOUT, operator_tags(self))
            raise

    return wrapper  # type: ignore[return-value]
