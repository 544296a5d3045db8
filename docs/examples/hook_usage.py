"""The hook outside an operator: a call, its parts, and the connection test."""

from __future__ import annotations

from typing import Any

from airflow_provider_banana.hooks.banana import BananaHook


def main(conn_id: str = "banana_default") -> dict[str, Any]:
    with BananaHook(conn_id) as hook:
        # Proves the URL answers and the key is accepted; never starts an inference.
        ok, message = hook.test_connection()

        # Start, then long-poll Checks until the call is done: the modelOutputs list.
        outputs = hook.run({"prompt": "hello"}, "wordcount", timeout=600)

        # The same in parts. A Start is billed; Checks are free.
        started = hook.start({"prompt": "hello again"}, "wordcount", start_only=True)
        result = hook.check(started.call_id)  # raises BananaCallError if it failed
        waited = hook.wait(started.call_id, timeout=600)
    return {
        "ok": ok,
        "message": message,
        "outputs": outputs,
        "state": result.state.value,
        "waited": waited,
    }


if __name__ == "__main__":
    print(main())
