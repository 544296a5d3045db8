"""
The OpenLineage names of the operators' files (plain data; the emitted events are in tests/test_metrics.py).

The names follow OpenLineage's dataset naming, as the OpenLineage provider's own converters for
local files and S3 do: a local file is namespace ``file`` and its absolute path, an object store's
``<scheme>://<bucket>`` and its key.
"""

from __future__ import annotations

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_banana.exceptions import BananaConfigError
from airflow_provider_banana.lineage import dataset_name, files_lineage
from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("file:///data/in.jsonl", ("file", "/data/in.jsonl")),
        ("/data/in.jsonl", ("file", "/data/in.jsonl")),
        (ObjectStoragePath("file:///data/out.jsonl"), ("file", "/data/out.jsonl")),
        ("s3://bucket/batches/out.jsonl", ("s3://bucket", "batches/out.jsonl")),
        ("gs://bucket/a/b.json", ("gs://bucket", "a/b.json")),
    ],
)
def test_files_are_named_as_openlineage_datasets(path: object, expected: tuple[str, str]) -> None:
    assert dataset_name(path, "output_path") == expected


def test_a_path_that_is_no_path_is_named_in_the_error() -> None:
    with pytest.raises((BananaConfigError, TypeError), match="input_path"):
        dataset_name(42, "input_path")


def test_the_operators_report_only_the_files_they_were_given() -> None:
    pytest.importorskip("airflow.providers.openlineage")
    batch = BananaBatchInferenceOperator(
        task_id="batch", input_path="s3://bucket/in.jsonl", output_path="file:///data/out.jsonl"
    )
    lineage = batch.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://bucket", "in.jsonl")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", "/data/out.jsonl")]
    listed = BananaBatchInferenceOperator(task_id="listed", model_inputs=[{"a": 1}])
    assert listed.get_openlineage_facets_on_complete(None).inputs == []
    assert listed.get_openlineage_facets_on_complete(None).outputs == []
    call = BananaInferenceOperator(task_id="call", model_inputs={"a": 1}, output_path="file:///data/one.json")
    assert [(d.namespace, d.name) for d in call.get_openlineage_facets_on_complete(None).outputs] == [
        ("file", "/data/one.json")
    ]
    assert files_lineage({}, {}).inputs == []
