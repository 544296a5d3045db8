"""
Read a batch's inputs from a JSONL file and write results to files, through Airflow's object storage.

Any URI :class:`airflow.sdk.ObjectStoragePath` understands works (``file://``, ``s3://``, ``gs://``
and the rest, with ``scheme://conn_id@bucket/key`` naming the connection). Both sides stream: the
inputs are read line by line, and the results are written in parts of a few hundred lines, then
put together into the output file once the batch has ended, so memory stays bounded by
``max_in_flight`` and nothing in the metadata database grows with the number of inputs. A single
call's ``output_path`` is written with the same primitive (:func:`write_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from array import array
from typing import TYPE_CHECKING, Any

from airflow_provider_banana.batch.plan import inputs_digest
from airflow_provider_banana.contract import OutputsDigest, OutputsWritten, canonical_outputs, validate_model_inputs
from airflow_provider_banana.exceptions import BananaConfigError, BananaError, BananaStorageError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import BinaryIO

    from airflow.sdk import ObjectStoragePath

#: The name of the folder, next to the output file, that holds its parts until the batch ends.
PARTS_SUFFIX = ".parts"


def as_storage_path(value: Any, argument: str) -> ObjectStoragePath:
    """
    Return ``value`` as an :class:`~airflow.sdk.ObjectStoragePath`.

    :param value: a URI string, or an ``ObjectStoragePath``.
    :param argument: the operator argument's name, for the error.
    :raises BananaConfigError: anything else, or an empty string.
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(value, ObjectStoragePath):
        return value
    if isinstance(value, str) and value.strip():
        return ObjectStoragePath(value.strip())
    raise BananaConfigError(f"{argument} must be a URI string or an ObjectStoragePath, got {value!r}")


def write_file(path: ObjectStoragePath, data: bytes, what: str, error: type[BananaError] = BananaConfigError) -> None:
    """
    Write ``data`` to ``path``, replacing what is there, its folder made first.

    :param path: the file.
    :param data: its whole content.
    :param what: the file, for the error (``output_path s3://...``).
    :param error: what a failure raises: :class:`BananaStorageError` in the middle of a batch.
    :raises BananaConfigError: the file cannot be written (or ``error``).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            file.write(data)
    except OSError as e:
        raise error(f"{what}: cannot be written: {e}") from e


def write_outputs(path: ObjectStoragePath, model_outputs: list[Any]) -> OutputsWritten:
    """
    Write one call's outputs to ``path`` as JSON (:func:`~airflow_provider_banana.contract.canonical_outputs`).

    :param path: the file (``output_path``).
    :param model_outputs: the call's ``modelOutputs`` list.
    :return: the file's URI, size and sha256: what the task returns instead of the outputs.
    :raises BananaConfigError: the file cannot be written.
    """
    data = canonical_outputs(model_outputs)
    write_file(path, data, f"output_path {path}")
    return OutputsWritten(str(path), OutputsDigest.of(data))


class ListInputs:
    """
    The inputs of a batch given as a list (``model_inputs``).

    :param inputs: the validated inputs.
    """

    def __init__(self, inputs: list[dict[str, Any]]) -> None:
        self._inputs = inputs
        self.size = len(inputs)
        self.digest = inputs_digest(inputs)

    def get(self, index: int) -> dict[str, Any]:
        """Return input ``index``."""
        return self._inputs[index]

    def close(self) -> None:
        """Nothing to release."""


class JsonlInputs:
    """
    The inputs of a batch read from a JSONL file: each line the ``modelInputs`` of one call.

    :meth:`scan` reads the whole file once, before any Start, and fails on the first bad line,
    naming the file and the line number; it keeps each line's byte offset (8 bytes per input, the
    only part of the batch's memory that grows with the file) so that :meth:`get` reads one line.

    :param path: the file.
    """

    def __init__(self, path: ObjectStoragePath) -> None:
        self.path = path
        self.size = 0
        self.digest = ""
        self._offsets = array("q")
        self._file: BinaryIO | None = None

    def scan(self) -> JsonlInputs:
        """
        Validate every line and note where each starts; return ``self``.

        Empty lines at the end of the file are ignored; anywhere else they are an error (every
        line is one input, and its number is its index in the output).

        :raises BananaConfigError: a line that is not a JSON object, or a file that cannot be read.
        """
        fingerprint = hashlib.sha256()
        offsets = array("q")
        position, number, blank = 0, 0, None
        try:
            with self.path.open("rb") as file:
                for raw in file:
                    number += 1
                    fingerprint.update(raw)
                    if not raw.strip():
                        blank = blank or number
                    else:
                        if blank is not None:
                            raise self._bad(blank, "an empty line (each line must be one input)")
                        self._check_line(raw, number)
                        offsets.append(position)
                    position += len(raw)
        except OSError as e:
            raise BananaConfigError(f"input_path {self.path}: cannot be read: {e}") from e
        self._offsets = offsets
        self.size = len(offsets)
        self.digest = "jsonl:" + fingerprint.hexdigest()
        return self

    def _check_line(self, raw: bytes, number: int) -> None:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise self._bad(number, f"not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise self._bad(number, f"a JSON {type(value).__name__}, not an object")
        try:
            validate_model_inputs(value)
        except (TypeError, ValueError) as e:
            raise self._bad(number, str(e)) from None

    def _bad(self, number: int, reason: str) -> BananaConfigError:
        return BananaConfigError(f"input_path {self.path}, line {number}: {reason}; no call was started")

    def get(self, index: int) -> dict[str, Any]:
        """
        Return input ``index`` (the line :meth:`scan` found at that position).

        :raises BananaStorageError: the file cannot be read again (the batch has begun).
        """
        try:
            if self._file is None:
                self._file = self.path.open("rb")
            self._file.seek(self._offsets[index])
            line = self._file.readline()
        except OSError as e:
            raise BananaStorageError(f"input_path {self.path}: cannot be read again (line {index + 1}): {e}") from e
        value: dict[str, Any] = json.loads(line)
        return value

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def encode_lines(lines: Iterable[dict[str, Any]]) -> bytes:
    """
    Return output lines as JSONL bytes, the outputs exactly as Banana sent them.

    :param lines: the lines, from :meth:`~airflow_provider_banana.batch.plan.BatchPlan.ready_lines`.
    """
    return b"".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for line in lines)


class JsonlOutput:
    """
    The output file of a batch, written in numbered parts and put together when the batch ends.

    An object store cannot append, and each deferral ends the worker's process, so the lines are
    written as parts (``<output>.parts/part-000000.jsonl``, ...) whose count the batch's state
    records; a try that died after writing a part but before recording it writes the same part
    again. :meth:`assemble` then copies the parts into the output file in order, streaming.

    :param path: the output file.
    """

    def __init__(self, path: ObjectStoragePath) -> None:
        self.path = path
        self.parts = path.parent / (path.name + PARTS_SUFFIX)

    def _part(self, number: int) -> ObjectStoragePath:
        return self.parts / f"part-{number:06d}.jsonl"

    def write_part(self, number: int, lines: list[dict[str, Any]]) -> None:
        """
        Write part ``number`` (overwriting one an earlier try may have left).

        :param number: the part's number: the count of parts recorded so far.
        :param lines: its lines, in input order.
        :raises BananaStorageError: the part cannot be written.
        """
        write_file(
            self._part(number), encode_lines(lines), f"output_path {self.path} (its part {number})", BananaStorageError
        )

    def assemble(self, count: int) -> None:
        """
        Write the output file from parts ``0 .. count - 1``, in order, streaming.

        :param count: the parts recorded.
        :raises BananaStorageError: a part is missing or the file cannot be written.
        """
        try:
            with self.path.open("wb") as out:
                for number in range(count):
                    with self._part(number).open("rb") as part:
                        shutil.copyfileobj(part, out, 1024 * 1024)
        except OSError as e:
            raise BananaStorageError(f"output_path {self.path}: cannot be written: {e}") from e

    def remove_parts(self) -> None:
        """Remove the parts folder (once the output file is whole)."""
        if self.parts.exists():
            for part in self.parts.iterdir():
                part.unlink()
            with contextlib.suppress(OSError):  # object stores have no folders to remove
                self.parts.rmdir()
