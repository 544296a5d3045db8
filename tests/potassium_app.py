"""
A real Potassium app (Banana's own serving framework) for ``tests/test_potassium.py``.

Run as ``python tests/potassium_app.py PORT``: it serves on 127.0.0.1 only. Potassium 0.5.0 runs
one handler at a time and queues the rest inside itself; a handler that raises is answered 500
with the traceback as text/plain; ``GET /__status__`` answers 200 once the app is up.

Handlers:

``/sleep``
    ``{"seconds": float = 0, "tag": any}`` sleeps, then replies ``{"slept", "tag", "began", "ended"}``
    (Unix times, so a test can tell whether two requests overlapped).
``/crash``
    Always raises ``ValueError("bad weights")``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from potassium import Potassium, Request, Response

app = Potassium("banana-devserver-test")


@app.init
def init() -> dict[str, Any]:
    """Load nothing; a real app loads its model here, once."""
    return {"loaded_at": time.time()}


@app.handler("/sleep")
def sleep(context: dict[str, Any], request: Request) -> Response:
    """Sleep ``seconds``, then say when this request ran."""
    inputs = request.json or {}
    seconds = float(inputs.get("seconds", 0))
    began = time.time()
    time.sleep(seconds)
    return Response(json={"slept": seconds, "tag": inputs.get("tag"), "began": began, "ended": time.time()})


@app.handler("/crash")
def crash(context: dict[str, Any], request: Request) -> Response:
    """Fail the way a model whose weights do not load fails."""
    raise ValueError("bad weights")


if __name__ == "__main__":
    app.serve(host="127.0.0.1", port=int(sys.argv[1]))
