"""Decide, Check after Check, how waiting for a call goes, and what a retried task does with its call."""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.contract.deadline import budget, call_timeout_error, deadline_for
from airflow_provider_banana.contract.replies import BananaFinished, CallState
from airflow_provider_banana.contract.validation import absolute_deadline, validate_poll_interval, validate_seconds
from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaError,
    BananaTimeoutError,
    BananaTransportError,
)

if TYPE_CHECKING:
    from airflow_provider_banana.contract.replies import BananaResult

#: Default seconds an inference may take, from Start to result.
DEFAULT_TIMEOUT = 3600.0


#: Default pause between Checks when long polling is off, or after a quick answer.
DEFAULT_POLL_INTERVAL = 5.0

#: Seconds a deferrable operator's worker waits for a call to end before deferring: about what the
#: round trip through the triggerer costs here (benchmarks/README.md, batch against mapping).
DEFAULT_DEFER_AFTER = 5.0

#: Seconds a deferral's backstop (Airflow's own timeout of the deferral) waits past the trigger's
#: deadline, so that the trigger's clearer ``timeout`` event normally wins and the backstop only
#: fires if the trigger cannot run.
DEFER_BACKSTOP_MARGIN = 60.0

#: The first long poll of a wait is abandoned after a random share of the server's hold between this
#: and the whole hold (see :meth:`CallWaiter.hold_cut`), so that waits begun together part ways.
SPREAD_FROM = 0.5

#: Least seconds between two progress lines of one wait when its status does not change: an hour's
#: call logs 12, not thousands. Not one per long poll (Banana holds one 50 s): at thousands of
#: triggers, a log line costs the triggerer about as much CPU as the Check it reports on.
PROGRESS_EVERY = 300.0


def time_left(seconds: float, *, estimate: bool = False) -> str:
    """
    Return how a log line says the time left: "12 s left", "under 1 s left", never "-0 s left".

    :param seconds: the seconds left (negative once a deadline passed).
    :param estimate: the figure is a guess from a rate: "about 12 s left".
    """
    if seconds <= 0:
        return "no time left"
    if seconds < 1:
        return "under 1 s left"
    return f"{'about ' if estimate else ''}{seconds:.0f} s left"


@dataclass(frozen=True)
class WaitStep:
    """
    What to do after one Check while waiting for a call.

    :param outputs: the ``modelOutputs`` list once the call finished, else ``None``.
    :param pause: seconds to sleep before the next Check.
    :param status_changed: the status differs from the last one seen (worth a log line).
    :param log_line: the lazy log line (format, then arguments) worth writing now, if any: a status
        change, or a progress line at most once per :data:`PROGRESS_EVERY` seconds.
    """

    outputs: list[Any] | None
    pause: float
    status_changed: bool
    log_line: tuple[Any, ...] | None = None


@dataclass
class CallWaiter:
    """
    Decide, Check after Check, how waiting for one call goes: the sync and async loops only send.

    :param call_id: the call.
    :param deadline: ``time.time()`` after which the wait fails with :class:`BananaTimeoutError`.
    :param timeout: the seconds the deadline stands for, for the error text.
    :param long_poll: use long-poll Checks.
    :param poll_interval: least seconds between the starts of two Checks.
    :param started_at: ``time.time()`` when the call was started.
    """

    call_id: str
    deadline: float
    timeout: float
    long_poll: bool
    poll_interval: float
    started_at: float
    last_status: str | None = None
    checks: int = 0
    #: When the last line was logged (the wait's start at first: progress lines come after that).
    last_logged: float = field(default_factory=time.time)
    #: The size of the reply that finished the call (0 until then).
    reply_bytes: int = 0

    @classmethod
    def begin(
        cls,
        call_id: str,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        started_at: float | None = None,
        long_poll: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> CallWaiter:
        """
        Return a waiter for a call, validating the arguments.

        The wait ends at one absolute ``deadline``: given as such (a trigger's, which outlives
        any process), or as ``timeout`` seconds from ``started_at``.

        :param call_id: the call.
        :param timeout: seconds the call may take from ``started_at`` (default :data:`DEFAULT_TIMEOUT`).
        :param deadline: ``time.time()`` after which the wait fails; wins over ``timeout``.
        :param started_at: ``time.time()`` of the Start (default: now).
        :param long_poll: use long-poll Checks.
        :param poll_interval: least seconds between the starts of two Checks.
        :raises BananaConfigError: a bad timeout, deadline or poll interval.
        """
        poll_interval = validate_poll_interval(poll_interval)
        started_at = time.time() if started_at is None else started_at
        if deadline is None:
            timeout = validate_seconds("timeout", DEFAULT_TIMEOUT if timeout is None else timeout)
            deadline = deadline_for(started_at, timeout)
        deadline = absolute_deadline(deadline)
        return cls(
            call_id=call_id,
            deadline=deadline,
            # What the deadline stands for, in the error text: the whole budget from the Start.
            timeout=budget(deadline, started_at),
            long_poll=long_poll,
            poll_interval=poll_interval,
            started_at=started_at,
        )

    def remaining(self) -> float:
        """Return the seconds left before the deadline (negative once passed)."""
        return self.deadline - time.time()

    def elapsed(self) -> float:
        """Return the seconds since the call was started."""
        return time.time() - self.started_at

    def expired_error(self) -> BananaTimeoutError:
        """Return the error that reports the deadline passed."""
        return call_timeout_error(self.call_id, self.deadline, self.started_at, self.last_status)

    def raise_if_expired(self) -> None:
        """
        Raise if the deadline has passed.

        :raises BananaTimeoutError: it has.
        """
        if self.remaining() <= 0:
            raise self.expired_error()

    def failure(self, error: BananaError) -> BananaError:
        """
        Return what a Check's error means for the wait.

        A Check abandoned because the deadline came (its read timeout is cut to the deadline) is
        the deadline, not transport trouble; anything else stands as it is.

        :param error: what the Check raised.
        """
        if isinstance(error, BananaTransportError) and self.remaining() <= 0:
            return self.expired_error()
        return error

    def hold_cut(self, check_hold: float) -> float | None:
        """
        Return after how many seconds to abandon the next Check unanswered, or ``None`` to let it be held.

        Waits that begin together (a burst of deferrals, or the thousands of triggers a surviving
        triggerer takes over) would otherwise long-poll in step for good: the server ends their
        holds together, the loop then re-sends thousands of Checks at once, and a call that
        finishes meanwhile waits behind them. So the first long poll of a wait is abandoned after a
        random 50-100 % of the hold and sent again at once; every later hold of the wait then ends
        at a time of its own. Nothing is lost: a Check is read-only, and a call that finished
        between the two Checks is answered at once by the second. Never below ``poll_interval``,
        so two Checks still start at least that far apart.

        :param check_hold: the seconds the server holds a long poll (the connection's ``check_hold``).
        """
        if not self.long_poll or self.checks:
            return None
        low = max(SPREAD_FROM * check_hold, self.poll_interval)
        if low >= check_hold:
            return None
        cut = random.uniform(low, check_hold)
        return cut if cut < self.remaining() else None

    def observe_unanswered(self) -> WaitStep:
        """Count a Check abandoned at its :meth:`hold_cut` and return what to do next: Check again at once."""
        self.checks += 1
        return WaitStep(outputs=None, pause=0.0, status_changed=False)

    def observe(self, result: BananaResult, *, waited: float) -> WaitStep:
        """
        Take one Check's result and return what to do next.

        :param result: the Check's result.
        :param waited: seconds the Check took.
        """
        self.checks += 1
        status = result.status_text
        previous, self.last_status = self.last_status, status
        changed = status != previous
        now = time.time()
        line: tuple[Any, ...] | None = None
        if isinstance(result, BananaFinished):
            self.reply_bytes = result.reply_bytes
            # The outcome is the caller's to log, once, with what it knows (the trigger: its Checks).
            return WaitStep(outputs=result.model_outputs, pause=0.0, status_changed=changed)
        # The first status is news only if it is not plain "running", which the Start already said.
        if status != (previous or CallState.RUNNING.value):
            line = ("Banana call %s is %s after %.1f s", self.call_id, status, now - self.started_at)
        elif now - self.last_logged >= PROGRESS_EVERY:
            line = (
                "Banana call %s is still %s after %.1f s (Checks: %d; %s before the deadline)",
                self.call_id,
                status,
                now - self.started_at,
                self.checks,
                time_left(self.deadline - now),
            )
        if line is not None:
            self.last_logged = now
        return WaitStep(
            outputs=None,
            pause=pause_before_next_check(waited, self.poll_interval, self.remaining()),
            status_changed=changed,
            log_line=line,
        )


def pause_before_next_check(waited: float, poll_interval: float, remaining: float) -> float:
    """
    Return how long to sleep before the next Check.

    A long poll that was held for ``poll_interval`` or more has already waited: no sleep. A quick
    answer (long polling off, or a server that does not hold) is followed by the rest of
    ``poll_interval``, so a call is never checked in a tight loop. Never sleeps past the deadline.

    :param waited: seconds the last Check took.
    :param poll_interval: the minimum time between the starts of two Checks.
    :param remaining: seconds left before the deadline.
    """
    return max(0.0, min(poll_interval - waited, remaining))


class Reattach(str, enum.Enum):
    """What a new try does with a call an earlier try of the same task instance started."""

    #: Still running: wait for it instead of paying for a new one.
    WAIT = "wait"
    #: Finished: its outputs are the task's result.
    FINISHED = "finished"
    #: Failed, expired or unknown: start a new call.
    RESTART = "restart"


def reattach_decision(outcome: BananaResult | BananaCallError) -> Reattach:
    """
    Return what to do with a stored call, given a Check of it.

    Transport trouble is not an outcome: it is raised, so the try fails without starting a second
    call for a call that may still run.

    :param outcome: the Check's result, or the :class:`BananaCallError` it raised.
    """
    if isinstance(outcome, BananaCallError):
        return Reattach.RESTART
    return Reattach.FINISHED if isinstance(outcome, BananaFinished) else Reattach.WAIT
