"""Tools from plain functions and the tool-call parsers: every way a call can fail is an answer
to the model, never an exception out of the rollout."""

import threading

import pytest

from lit_rl.environments import HermesToolCalls, TagToolCalls, ToolCall, Tools, calculate


def add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b


def test_the_schema_comes_from_type_hints_and_the_docstring():
    (schema,) = Tools([add]).schemas
    function = schema["function"]
    assert function["name"] == "add" and function["description"] == "Adds two integers."
    assert function["parameters"]["properties"] == {
        "a": {"type": "integer", "description": "the first."},
        "b": {"type": "integer", "description": "the second."},
    }
    assert function["parameters"]["required"] == ["a", "b"]


def test_a_call_answers_with_the_tools_value():
    assert Tools([add])(ToolCall("add", {"a": 2, "b": 3})).content == "5"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (ToolCall("multiply", {}), "unknown tool 'multiply'; the tools are ['add']"),
        (ToolCall("add", {"a": 1}), "add: missing a required argument: 'b'"),
        (ToolCall("add", {"a": 1, "b": 2, "c": 3}), "add: got an unexpected keyword argument 'c'"),
        (ToolCall("add", {"a": 1, "b": "x"}), "add raised TypeError"),
    ],
    ids=["unknown", "missing-argument", "extra-argument", "raises"],
)
def test_every_failure_is_an_error_answer(call, message):
    result = Tools([add])(call)  # the default 10 s: no answer here depends on speed
    assert result.error and message in result.content


def test_a_call_without_an_answer_in_time_is_an_error_answer():
    # The tool answers only once the test has its result, so the timeout is what ends the
    # call however loaded the machine is.
    answered = threading.Event()

    def hang() -> str:
        """Waits until the test lets it answer."""
        answered.wait()
        return "late"

    try:
        result = Tools([hang], timeout_s=0.1)(ToolCall("hang", {}))
    finally:
        answered.set()  # its worker thread ends (the pool's threads are joined at exit)
    assert result.error and result.content == "error: hang did not answer within 0.1 s"


def test_hermes_calls_and_their_errors():
    text = (
        'Let me add. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
        "<tool_call>{not json}</tool_call>"
        '<tool_call>["add"]</tool_call>'
        '<tool_call>{"name": "nap"}</tool_call>'
    )
    parsed = HermesToolCalls()(text)
    assert parsed.calls == [ToolCall("add", {"a": 1, "b": 2}), ToolCall("nap", {})]
    assert parsed.errors[0].startswith("error: tool call 2 is not valid JSON")
    assert parsed.errors[1] == 'error: tool call 3 needs {"name": "...", "arguments": {...}}'
    assert HermesToolCalls()("no calls here").calls == []


def test_tag_calls():
    parsed = TagToolCalls()("first <calc> 12*7 </calc> then <calc>1+1</calc>")
    assert parsed.calls == [
        ToolCall("calculate", {"expression": "12*7"}),
        ToolCall("calculate", {"expression": "1+1"}),
    ]
    parsed = TagToolCalls("py", "run", "code")("<py>print(1)</py>")
    assert parsed.calls == [ToolCall("run", {"code": "print(1)"})]


@pytest.mark.parametrize(
    ("expression", "value"), [("12*(7+5)", "144"), ("7/2", "3.5"), ("-2**3", "-8"), ("10//3", "3")]
)
def test_calculate(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os')", "2**1000", "x+1", "1+"])
def test_calculate_refuses_what_is_not_small_arithmetic(expression):
    with pytest.raises((ValueError, SyntaxError)):
        calculate(expression)
