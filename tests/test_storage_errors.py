"""A batch's files failing after the batch began: BananaStorageError, not BananaConfigError ("before any request")."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_banana.batch.files import JsonlInputs, JsonlOutput
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import BananaConfigError, BananaError, BananaStorageError
from tests.dags import batch_file_dags as scenarios
from tests.helpers import assert_raised, states


def replace_with_file(folder: Path) -> None:
    # Tests run as root, whom chmod does not stop: a file where the folder was stops everyone.
    shutil.rmtree(folder)
    folder.write_text("not a folder any more")


def test_a_storage_error_is_a_banana_error_but_not_a_config_error() -> None:
    assert issubclass(BananaStorageError, BananaError)
    assert not issubclass(BananaStorageError, BananaConfigError)


def test_a_part_that_cannot_be_written_mid_batch_is_a_storage_error(tmp_path: Path) -> None:
    output = JsonlOutput(ObjectStoragePath(f"file://{tmp_path}/out.jsonl"))
    output.write_part(0, [{"index": 0}])
    replace_with_file(tmp_path / "out.jsonl.parts")
    with pytest.raises(BananaStorageError, match=r"out\.jsonl \(its part 1\): cannot be written"):
        output.write_part(1, [{"index": 1}])
    with pytest.raises(BananaStorageError, match=r"out\.jsonl: cannot be written"):
        output.assemble(2)


def test_an_input_file_gone_mid_batch_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"n": 0}\n{"n": 1}\n')
    source = JsonlInputs(ObjectStoragePath(f"file://{path}")).scan()
    try:
        path.unlink()
        path.mkdir()  # a folder where the file was: it cannot be opened again
        with pytest.raises(BananaStorageError, match=r"in\.jsonl: cannot be read again \(line 2\)"):
            source.get(1)
    finally:
        source.close()


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db", "banana_conn")
def test_an_output_folder_lost_after_the_first_part_fails_the_batch_with_a_storage_error(
    server: DevServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # 64 calls of 0.3 s, 8 at a time: a part every 16 lines, the first long before the last call.
    rows = [{"seconds": 0.3, "result": i} for i in range(64)]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    parts = tmp_path / "results" / "out.jsonl.parts"

    def break_after_first_part() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (parts / "part-000000.jsonl").exists():
                replace_with_file(parts)
                return
            time.sleep(0.01)

    breaker = threading.Thread(target=break_after_first_part, daemon=True)
    breaker.start()
    run = scenarios.file_blocking.test(
        run_conf={"input": f"file://{inputs}", "output": f"file://{tmp_path}/results/out.jsonl"}
    )
    breaker.join(timeout=120)
    assert parts.is_file(), "the batch ended before its parts folder was replaced"
    assert states(run)["batch"] == "failed"
    logs = "".join(capfd.readouterr())
    assert_raised(logs, "BananaStorageError", "out.jsonl (its part", "cannot be written")
    assert "BananaConfigError" not in logs
    assert not (tmp_path / "results" / "out.jsonl").exists()
