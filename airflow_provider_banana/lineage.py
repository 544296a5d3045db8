"""
Describe an operator's files as OpenLineage datasets, for the OpenLineage provider to send.

Airflow's hook-level lineage of ``ObjectStoragePath`` sees each ``read`` and ``write`` on an
opened file: for a batch that would be every part file (``<output>.parts/part-N.jsonl``, deleted
at the end) both as an output and, when they are put together, as an input; and a file the
triggerer writes is never seen by the task. So the operators name their files themselves
(``get_openlineage_facets_on_complete``), which the OpenLineage provider prefers to hook lineage.

Names follow OpenLineage's dataset naming: a local file is namespace ``file`` and its absolute
path; an object store's is ``<scheme>://<bucket>`` and the key (``s3://bucket`` and ``a/b.jsonl``).
Nothing here imports the OpenLineage provider until it asks for the facets.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.batch.files import as_storage_path

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

__all__ = ["dataset_name", "files_lineage"]


def dataset_name(path: Any, argument: str) -> tuple[str, str]:
    """
    Return the OpenLineage ``(namespace, name)`` of a file.

    :param path: a URI string or an ``ObjectStoragePath``.
    :param argument: the operator argument it came from, for an error message.
    """
    uri = str(as_storage_path(path, argument))
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("", "file", "local"):
        return "file", parts.path
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/") or "/"


def files_lineage(inputs: dict[str, Any], outputs: dict[str, Any]) -> OperatorLineage:
    """
    Return the lineage of an operator that reads and writes the given files.

    :param inputs: argument name to path (``None`` values are left out), e.g. ``{"input_path": ...}``.
    :param outputs: the same for the files written.
    """
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    def datasets(paths: dict[str, Any]) -> list[Dataset]:
        return [Dataset(*dataset_name(path, argument)) for argument, path in paths.items() if path is not None]

    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))
