"""A model served with Potassium, to put behind the local Banana server."""

from __future__ import annotations

import sys
from typing import Any

from potassium import Potassium, Request, Response

app = Potassium("my-model")


@app.init
def init() -> dict[str, Any]:
    # Load the model once, here; every handler gets what this returns as its context.
    return {"model": str.upper}


@app.handler("/")
def handler(context: dict[str, Any], request: Request) -> Response:
    # The call's modelInputs, exactly as the task gave them.
    prompt = request.json["prompt"]
    return Response(json={"output": context["model"](prompt)}, status=200)


if __name__ == "__main__":
    app.serve(host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8001)
