"""``@task.banana`` and ``@task.banana_batch``: DAGs of ``tests/dags/decorator_dags.py`` run with ``dag.test()``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaConfigError
from tests.dags import decorator_dags as dags
from tests.helpers import assert_raised, states, xcom


def test_the_provider_registers_both_decorators() -> None:
    from airflow.sdk import task

    from airflow_provider_banana.decorators.banana import banana_batch_task, banana_task

    assert task.banana is banana_task
    assert task.banana_batch is banana_batch_task


@pytest.mark.parametrize(
    ("decorator", "argument"),
    [("banana_task", "model_inputs"), ("banana_batch_task", "model_inputs"), ("banana_batch_task", "input_path")],
)
def test_inputs_given_as_an_argument_are_refused_when_the_dag_is_parsed(decorator: str, argument: str) -> None:
    from airflow_provider_banana.decorators import banana

    with pytest.raises(BananaConfigError, match=f"return value: do not pass {argument}"):
        getattr(banana, decorator)(model_key="wordcount", **{argument: [{"prompt": "x"}]})


def test_multiple_outputs_is_refused() -> None:
    from airflow_provider_banana.decorators.banana import banana_task

    with pytest.raises(BananaConfigError, match="multiple_outputs does not apply"):
        banana_task(model_key="wordcount", multiple_outputs=True)


@pytest.mark.usefixtures("airflow_db", "banana_conn")
class TestDecoratorsRunDags:
    @pytest.mark.parametrize("dag", [dags.d_blocking, dags.d_deferrable], ids=["blocking", "deferrable"])
    def test_the_task_returns_the_model_outputs(self, dag: Any, server: DevServer) -> None:
        run = dag.test()
        assert str(run.state) == "success", states(run)
        outputs = xcom(run, "downstream")
        # "hello from <dag id>": the template in the returned inputs was rendered.
        assert outputs == [
            {
                "words": 3,
                "characters": len(f"hello from {dag.dag_id}"),
                "upper": f"HELLO FROM {dag.dag_id.upper()}",
                "reversed": f"hello from {dag.dag_id}"[::-1],
            }
        ]
        assert xcom(run, "infer") == outputs
        assert server.stats()["starts_taken"] == 1
        if dag is dags.d_deferrable:
            assert xcom(run, "infer", key="call_id").startswith("call_")  # pushed before deferring

    def test_a_json_object_string_is_taken(self, server: DevServer) -> None:
        run = dags.d_json_string.test()
        assert str(run.state) == "success", states(run)
        assert xcom(run, "downstream")[0]["result"] == "from a JSON string"

    def test_partial_and_expand_run_one_call_per_input(self, server: DevServer) -> None:
        run = dags.d_mapped.test()
        assert str(run.state) == "success", states(run)
        assert [outputs[0]["upper"] for outputs in xcom(run, "gather")] == ["SAY A", "SAY B C", "SAY D E F"]
        assert server.stats()["starts_taken"] == 3

    @pytest.mark.parametrize(
        ("dag", "fragments"),
        [
            (dags.d_bad_return, ("@task.banana function 'returns_a_list' returned list", "no call was started")),
            (
                dags.d_bad_json,
                ("'returns_a_json_array' returned bad model inputs", "must be a JSON object", "no call was started"),
            ),
            (
                dags.d_batch_bad_return,
                ("@task.banana_batch function 'returns_a_dict' returned dict", "no call was started"),
            ),
        ],
        ids=["list", "json-array", "batch-dict"],
    )
    def test_a_bad_return_value_fails_before_any_start(
        self, dag: Any, fragments: tuple[str, ...], server: DevServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        run = dag.test()
        assert str(run.state) == "failed"
        assert_raised("".join(capfd.readouterr()), "BananaConfigError", *fragments)
        assert server.stats()["starts_taken"] == 0

    def test_a_failed_inference_fails_the_task(self, server: DevServer, capfd: pytest.CaptureFixture[str]) -> None:
        run = dags.d_failed.test()
        assert states(run) == {"doomed": "failed"}
        assert_raised("".join(capfd.readouterr()), "BananaCallError", "failed: error: model crashed: bad weights")
        assert server.stats()["starts_taken"] == 1

    def test_a_batch_of_a_returned_list(self, server: DevServer) -> None:
        run = dags.d_batch_list.test()
        assert str(run.state) == "success", states(run)
        assert [outputs[0]["words"] for outputs in xcom(run, "downstream")] == [1, 2, 3, 4, 5, 6, 7]
        assert server.stats()["starts_taken"] == 7

    def test_a_batch_of_a_returned_file(self, server: DevServer, tmp_path: Path) -> None:
        source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        source.write_text("".join(json.dumps({"prompt": "x " * n}) + "\n" for n in range(1, 6)))
        run = dags.d_batch_file.test(run_conf={"input": f"file://{source}", "output": f"file://{target}"})
        assert str(run.state) == "success", states(run)
        assert xcom(run, "downstream") == {"output_path": f"file://{target}", "succeeded": 5, "failed": 0}
        lines = [json.loads(line) for line in target.read_text().splitlines()]
        assert [(line["index"], line["model_outputs"][0]["words"]) for line in lines] == [(i, i + 1) for i in range(5)]
