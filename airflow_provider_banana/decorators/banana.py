"""
TaskFlow decorators whose function returns a Banana inference's inputs.

``@task.banana(...)`` wraps :class:`~airflow_provider_banana.operators.banana.BananaInferenceOperator`
and ``@task.banana_batch(...)`` wraps
:class:`~airflow_provider_banana.operators.banana.BananaBatchInferenceOperator`: the decorated
function runs in the worker, its return value becomes the operator's inputs (rendered as a
template, as the operator's own ``model_inputs`` is), and the task returns what the operator
returns. A batch's function runs again when its task resumes after a deferral, and must return the
same inputs. Airflow finds them through the ``task-decorators`` of the provider info;
``banana_task`` and ``banana_batch_task`` are the same decorators, importable without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory
from airflow.sdk.definitions.context import context_merge

from airflow_provider_banana.contract import validate_model_inputs
from airflow_provider_banana.exceptions import BananaConfigError
from airflow_provider_banana.operators.banana import BananaBatchInferenceOperator, BananaInferenceOperator

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator

__all__ = ["banana_batch_task", "banana_task"]


def _reject_inputs_argument(decorator: str, kwargs: Mapping[str, Any], names: Sequence[str]) -> None:
    for name in names:
        if name in kwargs:
            raise BananaConfigError(
                f"{decorator} takes the inputs from the decorated function's return value: do not pass {name}"
            )


def _call(operator: DecoratedOperator, context: Context) -> Any:
    """Run the decorated function as ``@task`` would, and render what it returned as a template."""
    try:
        from airflow.sdk.bases.decorator import KeywordParameters
    except ImportError:  # Airflow 3.1 keeps it in airflow-core
        from airflow.utils.operator_helpers import KeywordParameters  # type: ignore[no-redef, unused-ignore]

    context_merge(context, operator.op_kwargs)
    # The function gets its own arguments and the context keys it names, as a @task function does.
    kwargs = KeywordParameters.determine(operator.python_callable, operator.op_args, context).unpacking()
    returned = operator.python_callable(*operator.op_args, **kwargs)
    # The operators template model_inputs; the same strings returned from a function render alike.
    return operator.render_template(returned, context)


class _BananaDecoratedOperator(DecoratedOperator, BananaInferenceOperator):
    """Run the decorated function for the model inputs, then one inference with them."""

    custom_operator_name = "@task.banana"
    # model_inputs is computed in execute, after Airflow rendered the fields, so it is not one.
    template_fields: Sequence[str] = (
        *DecoratedOperator.template_fields,
        *(name for name in BananaInferenceOperator.template_fields if name != "model_inputs"),
    )
    template_fields_renderers = {**DecoratedOperator.template_fields_renderers}

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _reject_inputs_argument(self.custom_operator_name, kwargs, ("model_inputs",))
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, model_inputs=None, **kwargs
        )

    def execute(self, context: Context) -> Any:
        """Call the function, check what it returned (before any Start), then run the inference."""
        returned = _call(self, context)
        if not isinstance(returned, (Mapping, str, bytes)):
            raise BananaConfigError(
                f"{self.custom_operator_name} function {self.python_callable.__name__!r} returned "
                f"{type(returned).__name__}: it must return the model inputs, a dict or a JSON object string; "
                "no call was started"
            )
        try:
            self.model_inputs = validate_model_inputs(returned)
        except (TypeError, ValueError) as e:
            raise type(e)(
                f"{self.custom_operator_name} function {self.python_callable.__name__!r} returned bad model inputs: "
                f"{e}; no call was started"
            ) from e
        return super().execute(context)


class _BananaBatchDecoratedOperator(DecoratedOperator, BananaBatchInferenceOperator):
    """Run the decorated function for a batch's inputs (a list, or a JSONL file), then the batch."""

    custom_operator_name = "@task.banana_batch"
    template_fields: Sequence[str] = (
        *DecoratedOperator.template_fields,
        *(name for name in BananaBatchInferenceOperator.template_fields if name not in ("model_inputs", "input_path")),
    )
    template_fields_renderers = {**DecoratedOperator.template_fields_renderers}

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _reject_inputs_argument(self.custom_operator_name, kwargs, ("model_inputs", "input_path"))
        # An empty list stands in for the inputs until execute has them from the function.
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, model_inputs=[], **kwargs
        )

    def execute(self, context: Context) -> Any:
        """Call the function, take its list or file of inputs (checked before any Start), then run the batch."""
        self._take_inputs(context)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Call the function again, then take the trigger's wave as the operator does."""
        # A resumed task is a new operator object: the batch's plan is matched to its inputs, so the
        # function must give them again (the operator re-reads its upstream XCom or file alike).
        self._take_inputs(context)
        return super().execute_complete(context, event, **kwargs)

    def _take_inputs(self, context: Context) -> None:
        from airflow.sdk import ObjectStoragePath

        returned = _call(self, context)
        if isinstance(returned, (list, tuple)) or (isinstance(returned, str) and returned.lstrip().startswith("[")):
            # A list, or a JSON array string: the operator checks every item before any Start.
            self.model_inputs, self.input_path = returned, None
        elif isinstance(returned, (str, ObjectStoragePath)):
            self.model_inputs, self.input_path = None, returned
        else:
            raise BananaConfigError(
                f"{self.custom_operator_name} function {self.python_callable.__name__!r} returned "
                f"{type(returned).__name__}: it must return a list of model inputs (one dict per call), a JSON "
                "array string, or the path of a JSONL file (a URI string or an ObjectStoragePath); "
                "no call was started"
            )


def banana_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """
    Make a task of a function that returns a Banana inference's inputs; the task returns its outputs.

    Registered as ``@task.banana``. The function returns the ``modelInputs`` (a dict, or a JSON
    object string); the task runs :class:`~airflow_provider_banana.operators.banana.BananaInferenceOperator`
    with them and returns the ``modelOutputs`` list.

    :param python_callable: the decorated function (given when used as ``@task.banana`` without
        arguments).
    :param kwargs: the operator's arguments (``model_key``, ``deferrable``, ``timeout``, ``durable``
        ...) and ``BaseOperator``'s, except ``model_inputs``.
    :return: a TaskFlow decorator; call the decorated function in a DAG to make the task.
    """
    if "multiple_outputs" in kwargs:
        raise BananaConfigError("@task.banana returns the modelOutputs list: multiple_outputs does not apply")
    _reject_inputs_argument("@task.banana", kwargs, ("model_inputs",))
    return task_decorator_factory(
        python_callable=python_callable,
        # The function returns the inputs, not the task's result: its annotation must not unroll it.
        multiple_outputs=False,
        decorated_operator_class=_BananaDecoratedOperator,
        **kwargs,
    )


def banana_batch_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """
    Make a batch task of a function that returns many inferences' inputs.

    Registered as ``@task.banana_batch``. The function returns a list of inputs (one dict per
    call), a JSON array string, or the path of a JSONL file (a URI string or an
    ``ObjectStoragePath``, one call's inputs per line); the task runs
    :class:`~airflow_provider_banana.operators.banana.BananaBatchInferenceOperator` with them and
    returns what it returns. The function runs again each time the task resumes after a deferral
    (and on a retry), and must return the same inputs then.

    :param python_callable: the decorated function (given when used as ``@task.banana_batch``
        without arguments).
    :param kwargs: the batch operator's arguments (``model_key``, ``max_in_flight``,
        ``output_path``, ``on_item_failure`` ...) and ``BaseOperator``'s, except ``model_inputs``
        and ``input_path``.
    :return: a TaskFlow decorator; call the decorated function in a DAG to make the task.
    """
    if "multiple_outputs" in kwargs:
        raise BananaConfigError("@task.banana_batch returns the batch's result: multiple_outputs does not apply")
    _reject_inputs_argument("@task.banana_batch", kwargs, ("model_inputs", "input_path"))
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=False,
        decorated_operator_class=_BananaBatchDecoratedOperator,
        **kwargs,
    )
