"""
The Banana connection form: the "Default model key" field and the Extra JSON a new connection starts with.

Airflow 3.2+ turns the provider's ``conn-fields`` into ``extra_fields`` of ``GET /ui/connections/hook_meta``
(``ProvidersManager._to_api_format``: ``value`` is the field schema's ``default``, ``None`` when it has none).
Its React form starts each field at that ``value`` and writes every field's value into the Extra JSON
(``useParamStore.setParamsDict``); a text field shows a placeholder only when its schema has ``examples``
(``FieldString``). Airflow 3.1 ignores ``conn-fields``: the form has no such field and Extra starts as ``{}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from airflow.providers_manager import ProvidersManager
from airflow.sdk import Connection

from airflow_provider_banana import connection_ui_behaviour, get_provider_info
from airflow_provider_banana.hooks.banana import BananaSettings
from benchmarks.harness import free_port
from tests.components import STARTUP_TIMEOUT, AirflowComponents, airflow_env, stop_and_reap
from tests.helpers import AIRFLOW_VERSION, connection_json

#: What the model key field suggests (its schema's ``examples``), the placeholder the issue asked for.
PLACEHOLDER = "your-model-key"
#: The key under which ProvidersManager keeps the field (``extra__<conn type>__<field>``).
WIDGET_KEY = "extra__banana__model_key"

requires_conn_fields = pytest.mark.skipif(
    AIRFLOW_VERSION < (3, 2), reason="conn-fields in provider info arrived in Airflow 3.2 (3.1 ignores them)"
)


def banana_connection_type() -> dict[str, Any]:
    """Return the banana entry of get_provider_info()'s connection types."""
    (entry,) = [t for t in get_provider_info()["connection-types"] if t["connection-type"] == "banana"]
    return entry


def ui_initial_extra(extra_fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Return the Extra JSON the form starts a new connection with, built as the form builds it.

    ``setParamsDict`` writes ``JSON.stringify({name: spec.value, ...})``, which leaves out a value that is
    ``undefined`` (a spec without ``value``) and writes ``None`` as ``null``.
    """
    return {name: spec["value"] for name, spec in extra_fields.items() if "value" in spec}


def assert_model_key_spec(spec: Mapping[str, Any]) -> None:
    """Check one field spec as the form receives it: a placeholder, and a value that is not null."""
    assert PLACEHOLDER in spec["schema"].get("examples", []), spec
    assert spec["value"] is not None, spec
    assert spec["value"] == "", spec
    assert spec["schema"]["title"] == "Default model key", spec


def test_model_key_field_declares_a_placeholder() -> None:
    schema = banana_connection_type()["conn-fields"]["model_key"]["schema"]
    assert PLACEHOLDER in schema["examples"]
    # FieldSelector picks FieldString (the one widget that shows examples as a placeholder) for a
    # string type with no enum (a dropdown) and no format (date, password, multiline...).
    assert [t for t in schema["type"] if t != "null"] == ["string"]
    assert "enum" not in schema
    assert "format" not in schema


def test_model_key_field_starts_blank_not_null_and_stays_optional() -> None:
    schema = banana_connection_type()["conn-fields"]["model_key"]["schema"]
    assert "default" in schema
    assert schema["default"] is not None
    assert schema["default"] == ""
    # "null" in the type keeps the field optional (isParamRequired): a blank one does not block Save.
    assert "null" in schema["type"]


@requires_conn_fields
def test_providers_manager_parses_the_field_with_placeholder_and_blank_value() -> None:
    from airflow.api_fastapi.core_api.datamodels.connections import ConnectionHookMetaData
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    widgets = ProvidersManager().connection_form_widgets
    assert WIDGET_KEY in widgets
    widget = widgets[WIDGET_KEY]
    assert not widget.is_sensitive
    assert_model_key_spec(widget.field)
    # What the endpoint sends: the same conversion and response model as /ui/connections/hook_meta.
    meta = ConnectionHookMetaData(
        connection_type="banana",
        hook_class_name="airflow_provider_banana.hooks.banana.BananaHook",
        default_conn_name=None,
        hook_name="Banana",
        standard_fields=None,
        extra_fields=HookMetaService._convert_extra_fields({WIDGET_KEY: widget})["banana"],
    ).model_dump(mode="json")
    assert_model_key_spec(meta["extra_fields"]["model_key"])
    assert ui_initial_extra(meta["extra_fields"]) == {"model_key": ""}


@pytest.mark.skipif(AIRFLOW_VERSION >= (3, 2), reason="Airflow 3.2+ reads conn-fields")
def test_airflow_3_1_shows_no_model_key_field() -> None:
    # No field, so the form's Extra JSON stays the new connection's "{}".
    assert not [key for key in ProvidersManager().connection_form_widgets if key.startswith("extra__banana__")]


@pytest.mark.parametrize(
    ("extra", "model_key"),
    [
        pytest.param(None, None, id="no-extra"),
        pytest.param({}, None, id="no-model-key"),
        pytest.param({"model_key": None}, None, id="null-as-the-form-wrote-it"),
        pytest.param({"model_key": ""}, None, id="blank-as-the-form-now-starts"),
        pytest.param({"model_key": "wordcount"}, "wordcount", id="set"),
    ],
)
def test_from_connection_reads_a_blank_or_null_model_key_as_none(
    extra: dict[str, Any] | None, model_key: str | None
) -> None:
    conn = Connection(
        conn_id="banana_form",
        conn_type="banana",
        host="https://api.banana.dev/",
        password="key",
        extra=None if extra is None else json.dumps(extra, indent=2),
    )
    assert BananaSettings.from_connection(conn).model_key == model_key


def test_from_connection_reads_the_forms_initial_extra_as_no_model_key() -> None:
    fields = banana_connection_type()["conn-fields"]
    # The spec the form gets from the declaration (ProvidersManager._to_api_format).
    specs = {name: {"value": field["schema"].get("default")} for name, field in fields.items()}
    extra = ui_initial_extra(specs)
    assert None not in extra.values()
    conn = Connection(
        conn_id="banana_form",
        conn_type="banana",
        host="https://api.banana.dev/",
        password="key",
        extra=json.dumps(extra, indent=2),
    )
    assert BananaSettings.from_connection(conn).model_key is None


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[AirflowComponents]:
    """Start only the api-server on a fresh home (simple auth manager, all admins); stop it after."""
    home = tmp_path / "airflow-home"
    (home / "dags").mkdir(parents=True)
    api_port = free_port()
    # The connection is never used: airflow_env wants one for banana_default.
    env = airflow_env(home, api_port, connection_json("http://127.0.0.1:9/"))
    stack = AirflowComponents(home, env, f"http://127.0.0.1:{api_port}/")
    stack.log_dir.mkdir(parents=True)
    stack.run("db", "migrate")
    try:
        stack.start("api-server")
        yield stack
    finally:
        stragglers = stop_and_reap(stack)
        assert not stragglers, f"left running after stop: {stragglers}"


@pytest.mark.slow
@requires_conn_fields
def test_api_server_hook_meta_sends_the_placeholder_and_a_blank_value(api_server: AirflowComponents) -> None:
    # ~35 s: db migrate, then ~20 s until the api-server answers.
    metas = api_server.wait_for(
        "/ui/connections/hook_meta served",
        lambda: api_server.api("GET", "ui/connections/hook_meta"),
        STARTUP_TIMEOUT,
    )
    (meta,) = [m for m in metas if m["connection_type"] == "banana"]
    assert set(meta["extra_fields"]) == {"model_key"}
    assert_model_key_spec(meta["extra_fields"]["model_key"])
    declared = banana_connection_type()["conn-fields"]["model_key"]
    assert meta["extra_fields"]["model_key"]["description"] == declared["description"]
    assert ui_initial_extra(meta["extra_fields"]) == {"model_key": ""}
    # The standard fields' placeholders still arrive (ui-field-behaviour in provider info).
    assert meta["standard_fields"]["host"]["placeholder"] == connection_ui_behaviour()["placeholders"]["host"]


def test_the_registered_hook_class_itself_defines_the_form_layout() -> None:
    # Airflow 3.1 reads get_ui_field_behaviour only from the registered class's own __dict__
    # (providers_manager._import_hook), never an inherited one, and 3.1 has no conn-fields.
    from airflow_provider_banana.hooks.banana import BananaHook

    assert "get_ui_field_behaviour" in BananaHook.__dict__
    assert BananaHook.get_ui_field_behaviour()["relabeling"] == {"host": "Base URL", "password": "API key"}
