"""Tell a failed inference from a timeout, from transport trouble and from bad input."""

from __future__ import annotations

from airflow_provider_banana.exceptions import (
    BananaCallError,
    BananaConfigError,
    BananaTimeoutError,
    BananaTransportError,
)
from airflow_provider_banana.hooks.banana import BananaHook


def main(conn_id: str = "banana_default") -> list[str]:
    seen = []
    with BananaHook(conn_id) as hook:
        for model_key, inputs, timeout in [
            ("fail", {"reason": "bad weights"}, 60),  # the model fails
            ("sleep", {"seconds": 30}, 1),  # slower than its timeout
            ("wordcount", ["not", "a", "dict"], 60),  # refused before any request
        ]:
            try:
                hook.run(inputs, model_key, timeout=timeout)
            except BananaCallError as e:  # the inference failed: never retried
                seen.append(f"failed: call {e.call_id}: {e.message}")
            except BananaTimeoutError as e:  # our deadline passed; the call runs on
                seen.append(f"timed out: call {e.call_id} after {e.timeout:.0f} s")
            except BananaTransportError as e:  # the exchange failed after the retries
                seen.append(f"transport: {e}")
            except (BananaConfigError, TypeError) as e:  # bad input: nothing was sent
                seen.append(f"bad input: {e}")
    return seen


if __name__ == "__main__":
    print("\n".join(main()))
