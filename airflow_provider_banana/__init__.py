"""
Apache Airflow provider for Banana-compatible serverless inference (the Banana v4 REST API).

Importing this package is cheap: it holds only the version and the provider metadata that
Airflow reads through the ``apache_airflow_provider`` entry point.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "connection_ui_behaviour", "get_provider_info"]


def connection_ui_behaviour() -> dict[str, Any]:
    """Return how the connection form shows a Banana connection (hook and provider info share it)."""
    return {
        "hidden_fields": ["login", "schema", "port"],
        "relabeling": {"host": "Base URL", "password": "API key"},
        "placeholders": {
            "host": "https://api.banana.dev/",
            "password": "Your Banana API key",
            "extra": '{"model_key": "your-model-key"}',
        },
    }


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata Airflow's ProvidersManager reads."""
    behaviour = connection_ui_behaviour()
    return {
        "package-name": "airflow-provider-banana",
        "name": "Banana",
        "description": "Run model inference on a Banana-compatible serverless inference API (v4).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Banana",
                "external-doc-url": "https://github.com/bananaml",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Banana", "python-modules": ["airflow_provider_banana.hooks.banana"]}],
        "operators": [
            {
                "integration-name": "Banana",
                "python-modules": [
                    "airflow_provider_banana.operators.banana",
                    "airflow_provider_banana.operators.batch",
                ],
            }
        ],
        "sensors": [{"integration-name": "Banana", "python-modules": ["airflow_provider_banana.sensors.banana"]}],
        "triggers": [{"integration-name": "Banana", "python-modules": ["airflow_provider_banana.triggers.banana"]}],
        # @task.banana and @task.banana_batch: Airflow's task object resolves them from here.
        "task-decorators": [
            {"name": "banana", "class-name": "airflow_provider_banana.decorators.banana.banana_task"},
            {"name": "banana_batch", "class-name": "airflow_provider_banana.decorators.banana.banana_batch_task"},
        ],
        "connection-types": [
            {
                "connection-type": "banana",
                "hook-class-name": "airflow_provider_banana.hooks.banana.BananaHook",
                "hook-name": "Banana",
                "ui-field-behaviour": {
                    "hidden-fields": behaviour["hidden_fields"],
                    "relabeling": behaviour["relabeling"],
                    "placeholders": behaviour["placeholders"],
                },
                # Airflow 3.2+ shows these as form fields whose values it writes into the Extra
                # JSON (3.1 ignores them). Its React form gives a text field a placeholder only
                # through schema "examples" (also offered as suggestions), and starts each field at
                # schema "default": without one that is null, so a new connection's Extra read
                # {"model_key": null}. from_connection reads "" and null alike as no default key.
                "conn-fields": {
                    "model_key": {
                        "label": "Default model key",
                        "description": "Used when an operator or hook call gives no model_key, e.g. your-model-key.",
                        "schema": {"type": ["string", "null"], "default": "", "examples": ["your-model-key"]},
                    }
                },
            }
        ],
    }
