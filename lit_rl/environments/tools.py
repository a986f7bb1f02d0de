"""Tools as plain Python functions: the JSON schema a chat template shows the model comes from
their type hints and docstring (``transformers.utils.get_json_schema``); a call that fails in
any way answers the model with the error instead of ending the run."""

import concurrent.futures
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers.utils import get_json_schema

from lit_rl.environments.base import ToolCall


@dataclass(frozen=True)
class ToolResult:
    """What a call answers: the tool's return value as text, or the error, said to the model."""

    content: str
    error: bool = False


class Tools:
    """Named functions the model may call, each with ``timeout_s`` seconds to answer.

    Every failure is an answer: an unknown tool, arguments the function does not take (or
    misses), an exception it raises, or no answer within the timeout. A timed-out call keeps
    running on its worker thread (Python cannot stop a thread): give tools that may hang a
    timeout of their own.

    Args:
        functions: the tools; each needs type hints and a Google-style docstring with an
            ``Args:`` section (what the schema is made from, checked here).
        timeout_s: seconds a call may take.
    """

    def __init__(self, functions: list[Callable[..., Any]], timeout_s: float = 10.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"Tools.timeout_s must be > 0, got {timeout_s}")
        self.functions = {function.__name__: function for function in functions}
        if len(self.functions) != len(functions):
            raise ValueError(f"two tools share a name: {[f.__name__ for f in functions]}")
        self.schemas = [get_json_schema(function) for function in functions]
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="lit_rl-tool")

    def __call__(self, call: ToolCall) -> ToolResult:
        function = self.functions.get(call.name)
        if function is None:
            return ToolResult(
                f"error: unknown tool '{call.name}'; the tools are {sorted(self.functions)}",
                error=True,
            )
        try:
            inspect.signature(function).bind(**call.arguments)
        except TypeError as problem:
            return ToolResult(f"error: {call.name}: {problem}", error=True)
        future = self._pool.submit(function, **call.arguments)
        try:
            value = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            return ToolResult(
                f"error: {call.name} did not answer within {self.timeout_s:g} s", error=True
            )
        except Exception as problem:  # the tool's failure is the model's to read
            return ToolResult(
                f"error: {call.name} raised {type(problem).__name__}: {problem}", True
            )
        return ToolResult(str(value))
