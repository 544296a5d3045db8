"""
Turn a single call's outputs into the task's return value: the outputs (for XCom), or the ``output_path`` file.

The operator holds no outputs logic of its own: whether it waited for the call itself or a trigger
reported it, the result passes here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.batch.files import as_storage_path, write_outputs
from airflow_provider_banana.contract import EventOutputs, OutputsOnServer, OutputsWritten, check_storable

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_banana.hooks.banana import BananaHook


def task_result(
    outputs: list[Any], path: ObjectStoragePath | None, call_id: str | None, log: logging.Logger | Any
) -> Any:
    """
    Return the task's result for outputs the worker holds: the outputs, or the summary of the file they went to.

    With ``output_path`` the worker writes only outputs it holds itself; a deferred call's file is the
    triggerer's to write (it holds them first).

    :param outputs: the call's ``modelOutputs``.
    :param path: the ``output_path`` file, if any.
    :param call_id: the call, named in the error if the outputs cannot be stored.
    :param log: the task's logger.
    :raises BananaOutputsNotStorableError: outputs Airflow cannot store in XCom.
    """
    if path is None:
        # Every way out to XCom passes here, before the stored call is forgotten: outputs Airflow
        # cannot store fail the task as they are, and a retry reattaches to the call instead of
        # paying again. (A file written with output_path holds them whatever they are.)
        check_storable(outputs, call_id=call_id)
        return outputs
    written = write_outputs(path, outputs)
    log.info(
        "Wrote the Banana outputs to %s: %d bytes, sha256 %s",
        written.output_path,
        written.digest.size,
        written.digest.sha256,
    )
    return written.task_result()


def event_result(
    call_id: str,
    outputs: EventOutputs,
    output_path: str | ObjectStoragePath | None,
    hook: BananaHook,
    log: logging.Logger | Any,
) -> Any:
    """
    Return the task's result for outputs a trigger's event reported: written, in the event, or left on the server.

    :param call_id: the call.
    :param outputs: what the event said of the outputs.
    :param output_path: the operator's ``output_path``, if any (unused once the triggerer wrote it).
    :param hook: fetches outputs too large for the event with one Check (free), verified.
    :param log: the task's logger.
    :raises BananaOutputsError: large outputs could not be fetched as the trigger saw them.
    """
    if isinstance(outputs, OutputsWritten):
        log.info(
            "The triggerer wrote the outputs of Banana call %s to %s: %d bytes, sha256 %s",
            call_id,
            outputs.output_path,
            outputs.digest.size,
            outputs.digest.sha256,
        )
        return outputs.task_result()
    if isinstance(outputs, OutputsOnServer):
        log.info(
            "Fetching the outputs of Banana call %s (%d bytes, too large for the trigger's event) with one Check",
            call_id,
            outputs.digest.size,
        )
        outputs = hook.fetch_outputs(outputs)
    path = None if output_path is None else as_storage_path(output_path, "output_path")
    return task_result(outputs, path, call_id, log)
