"""The batch plan's Starts in flight and its ordered output lines, with plain data."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_banana.batch import (
    ORDER_WINDOW,
    START_LOST_EARLIER,
    BananaBatchError,
    BatchPlan,
    Wave,
)
from airflow_provider_banana.exceptions import (
    BananaBatchTimeoutError,
    BananaCallError,
    BananaConfigError,
    BananaTimeoutError,
)


def _plan(size: int, **kwargs: Any) -> BatchPlan:
    settings: dict[str, Any] = {"max_in_flight": 4, "item_retries": 0, "stop_on_failure": False, "digest": "d"}
    return BatchPlan(size=size, **{**settings, **kwargs})


class TestStartsInFlight:
    def test_max_starting_bounds_a_burst_below_the_free_slots(self) -> None:
        plan = _plan(20, max_in_flight=10, max_starting=3)
        assert plan.next_starts() == [0, 1, 2]
        assert plan.next_starts() == []  # three Starts in flight already
        plan.started(1, "c1")
        assert plan.next_starts() == [3]
        assert plan.starting == {0, 2, 3}
        assert plan.running == {1: "c1"}

    def test_an_input_is_started_only_once_its_answer_is_recorded(self) -> None:
        plan = _plan(3)
        plan.next_starts()
        assert not plan.running
        assert plan.starting == {0, 1, 2}
        assert not plan.ended  # Starts in flight: the batch is not over
        plan.started(0, "a")
        plan.started(1, None, outputs=[{"x": 1}])
        plan.start_not_sent(2)
        assert plan.running == {0: "a"}
        assert plan.finished == 1
        assert plan.next_starts() == [2]  # first in line again, no attempt counted
        assert plan.attempts.get(2) is None

    def test_a_start_that_may_have_been_taken_fails_naming_that_it_may_have_been_billed(self) -> None:
        plan = _plan(3, item_retries=2, stop_on_failure=True)
        plan.next_starts()
        plan.started(0, "a")
        plan.start_lost(1)
        plan.started(2, "c")
        # Not retried within the try (a second Start could pay twice), whatever item_retries says.
        assert plan.failed == {1: "its Start may have been taken (and billed) but no answer was recorded"}
        assert plan.next_starts() == []
        plan.record(Wave(finished={"a": [0], "c": [2]}))
        assert plan.ended
        with pytest.raises(BananaBatchError, match="item 1: its Start may have been taken"):
            plan.result({})

    def test_starts_in_flight_when_a_worker_died_are_reported_by_the_next_try_then_retried(self) -> None:
        plan = _plan(6, max_in_flight=4)
        plan.next_starts()
        plan.started(0, "a")
        plan.started(1, "b")  # 2 and 3: sent, no answer recorded, then the worker died
        state = plan.to_state()
        assert state["starting"] == [2, 3]
        retry = _plan(6, max_in_flight=4)
        assert retry.restore(state)
        assert retry.failed == {2: START_LOST_EARLIER, 3: START_LOST_EARLIER}
        assert retry.lost_earlier == [2, 3]
        assert retry.running == {0: "a", 1: "b"}
        assert not retry.starting
        retry.new_try()  # a new task try retries every failed input
        assert retry.next_starts() == [2, 3]
        # Every input is accounted for: running, starting again, or waiting.
        assert len(retry.running) + len(retry.starting) + retry.waiting == 6

    def test_no_input_is_dropped_whatever_happens_to_its_start(self) -> None:
        outcomes = ["started", "finished", "refused", "not_sent", "lost"] * 4
        plan = _plan(len(outcomes), max_in_flight=7, max_starting=5, item_retries=1)
        seen_lost: set[int] = set()
        rounds = 0
        while not plan.ended:
            rounds += 1
            assert rounds < 100
            for index in plan.next_starts():
                outcome = outcomes[index]
                if outcome == "not_sent" and plan.attempts.get(index) is None and rounds < 3:
                    plan.start_not_sent(index)
                elif outcome == "refused":
                    plan.start_failed(index, "error: refused")
                elif outcome == "lost" and index not in seen_lost:
                    seen_lost.add(index)
                    plan.start_lost(index)
                elif outcome == "finished":
                    plan.started(index, None, outputs=[index])
                else:
                    plan.started(index, f"c{index}")
            plan.record(Wave(finished={c: [i] for i, c in plan.running.items()}))
        result = plan.result(plan.outputs)
        for index, outcome in enumerate(outcomes):
            if outcome in ("refused", "lost"):
                assert result[index] is None
                assert index in plan.failed
            else:
                assert result[index] == [index]


class TestOrderedLines:
    def test_lines_come_in_input_order_once_the_run_before_them_is_ready(self) -> None:
        plan = _plan(4, ordered=True)
        plan.next_starts()
        for index in range(4):
            plan.started(index, f"c{index}")
        plan.record(Wave(finished={"c1": [1], "c2": [2]}, failed={"c3": "error: bad"}))
        assert plan.ready_lines() == []  # line 0 is not ready: nothing can be written yet
        plan.record(Wave(finished={"c0": [0]}))
        lines = plan.ready_lines()
        assert [line["index"] for line in lines] == [0, 1, 2, 3]
        assert lines[0] == {"index": 0, "status": "success", "call_id": "c0", "model_outputs": [0], "message": None}
        assert lines[3] == {
            "index": 3,
            "status": "failed",
            "call_id": "c3",
            "model_outputs": None,
            "message": "error: bad",
        }
        plan.lines_written(len(lines))
        assert (plan.written, plan.failed_written, plan.failed_count) == (4, 1, 1)
        assert not plan.failed
        assert not plan.held
        assert not plan.outputs
        assert plan.ready_lines() == []

    def test_starts_stay_within_the_window_past_the_first_unwritten_line(self) -> None:
        plan = _plan(1000, max_in_flight=2, ordered=True)
        window = ORDER_WINDOW * 2
        started = 0
        for _ in range(50):  # input 0 never finishes; every other one does at once
            for index in plan.next_starts():
                plan.started(index, f"c{index}")
                started += 1
            plan.record(Wave(finished={c: [i] for i, c in plan.running.items() if i != 0}))
        assert started == window
        assert plan.next_fresh == window
        assert plan.ready_lines() == []

    def test_held_outputs_are_fetched_again_after_a_restore(self) -> None:
        plan = _plan(3, ordered=True)
        plan.next_starts()
        plan.started(0, "c0")
        plan.started(1, "c1")
        plan.started(2, None, outputs=["at once"])
        plan.record(Wave(finished={"c1": ["one"]}))
        copy = _plan(3, ordered=True)
        assert copy.restore(plan.to_state())
        assert copy.refetch() == {1: "c1"}  # the Start that finished at once kept its outputs in the state
        copy.outputs[1] = ["one"]
        copy.record(Wave(finished={"c0": ["zero"]}))
        assert [line["model_outputs"] for line in copy.ready_lines()] == [["zero"], ["one"], ["at once"]]

    def test_outputs_that_cannot_be_fetched_again_fail_the_line(self) -> None:
        plan = _plan(1, ordered=True)
        plan.next_starts()
        plan.started(0, "c0")
        plan.record(Wave(finished={"c0": [0]}))
        copy = _plan(1, ordered=True)
        copy.restore(plan.to_state())
        copy.output_lost(0, "its outputs could not be fetched again")
        assert copy.finished == 0
        assert copy.ready_lines()[0]["status"] == "failed"

    def test_state_stays_bounded_by_max_in_flight_not_by_the_inputs(self) -> None:
        plan = _plan(100_000, max_in_flight=8, ordered=True)
        largest = 0
        for _ in range(2000):
            for index in plan.next_starts():
                plan.started(index, f"call_{index:012d}")
            plan.record(Wave(finished={c: [{"out": i}] for i, c in list(plan.running.items())[:5]}))
            plan.lines_written(len(plan.ready_lines()))
            largest = max(largest, len(str(plan.to_state())))
        assert plan.written > 5000
        assert largest < 4000


class TestBatchErrors:
    def test_batch_errors_sit_under_their_natural_parents(self) -> None:
        failed = BananaBatchError({2: "error: x"}, 5)
        assert isinstance(failed, BananaCallError)
        assert failed.message == "1 of 5 Banana batch items failed: item 2: error: x"
        late = BananaBatchTimeoutError({1: "c1"}, 3.0, {"finished": 1})
        assert isinstance(late, BananaTimeoutError)
        assert late.timeout == 3.0
        assert "item 1: c1" in str(late)

    def test_max_starting_is_checked(self) -> None:
        with pytest.raises(BananaConfigError, match="max_starting must be an integer >= 1, got 0"):
            _plan(1, max_starting=0)
