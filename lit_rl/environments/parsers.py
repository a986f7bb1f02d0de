"""Tool-call parsers: the calls in a turn's text, and the ones that could not be read."""

import json
import re
from dataclasses import dataclass, field
from typing import Protocol

from lit_rl.environments.base import ToolCall


@dataclass(frozen=True)
class ParsedCalls:
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one message per call that was not read


class ToolCallParser(Protocol):
    """Reads the tool calls out of a turn's text."""

    def __call__(self, text: str) -> ParsedCalls: ...


class HermesToolCalls:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the format of the Hermes
    and Qwen chat templates (and vLLM's ``hermes`` parser); several per turn."""

    pattern = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def __call__(self, text: str) -> ParsedCalls:
        calls, errors = [], []
        for number, body in enumerate(self.pattern.findall(text), start=1):
            try:
                call = json.loads(body)
            except json.JSONDecodeError as problem:
                errors.append(f"error: tool call {number} is not valid JSON ({problem.msg})")
                continue
            name, arguments = (
                (call.get("name"), call.get("arguments", {}))
                if isinstance(call, dict)
                else (None, None)
            )
            if not isinstance(name, str) or not isinstance(arguments, dict):
                errors.append(
                    f'error: tool call {number} needs {{"name": "...", "arguments": {{...}}}}'
                )
                continue
            calls.append(ToolCall(name, arguments))
        return ParsedCalls(calls, errors)


class TagToolCalls:
    """``<tag>text</tag>`` as a call of the tool ``tool`` with ``{argument: text}``: a tool
    format a model without a tool template (the embedded SmolLM2) can be prompted to write.
    The defaults read ``<calc>12*7</calc>`` as ``calculate(expression="12*7")``, the shipped
    ``Calculator``'s tool."""

    def __init__(self, tag: str = "calc", tool: str = "calculate", argument: str = "expression"):
        self.tool = tool
        self.argument = argument
        self.pattern = re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL)

    def __call__(self, text: str) -> ParsedCalls:
        bodies = self.pattern.findall(text)
        return ParsedCalls([ToolCall(self.tool, {self.argument: body.strip()}) for body in bodies])
