"""Two environments on math problems (the embedded set, GSM8K, ...): feedback on a wrong answer
until the model gets it or runs out of attempts, and a calculator the model can call."""

import ast
import operator
from collections.abc import Callable

from lit_rl.environments.base import Environment, Message, Row, StepResult, Turn
from lit_rl.environments.tools import Tools
from lit_rl.rewards import MathCorrectness
from lit_rl.rewards.math import extract_answer


class MathFeedback(Environment):
    """The question; after each wrong answer, "not correct, try again" (and the hint, when the
    row has one), up to ``max_attempts`` answers. A correct answer on attempt k (from 1) ends
    the episode with reward ``discount ** (k - 1)``: earlier is better; no correct answer, 0.

    Args:
        max_attempts: answers the model may give.
        discount: the reward's factor per extra attempt.
        prompt_field: the row's question (the datamodule's ``prompt``: with its suffix).
        answer_field: the row's reference answer.
        hint_field: a row field said after a wrong answer, when present.
    """

    def __init__(
        self,
        max_attempts: int = 3,
        discount: float = 0.5,
        prompt_field: str = "prompt",
        answer_field: str = "answer",
        hint_field: str = "hint",
    ) -> None:
        if max_attempts < 1 or not 0 <= discount <= 1:
            raise ValueError(
                f"MathFeedback: max_attempts >= 1 and discount in [0, 1], got {max_attempts} "
                f"and {discount}"
            )
        self.max_attempts = max_attempts
        self.discount = discount
        self.prompt_field, self.answer_field, self.hint_field = (
            prompt_field,
            answer_field,
            hint_field,
        )
        self.correctness = MathCorrectness(answer_field)
        self.row: Row = {}

    def reset(self, row: Row, seed: int) -> list[Message]:
        for name in (self.prompt_field, self.answer_field):
            if name not in row:
                raise KeyError(
                    f"MathFeedback reads the row's '{name}', but the row has {sorted(row)}: "
                    "set prompt_field/answer_field to the dataset's columns"
                )
        self.row = row
        return [{"role": "user", "content": str(row[self.prompt_field])}]

    def step(self, turn: Turn) -> StepResult:
        attempt = turn.index + 1
        answered = extract_answer(turn.text) is not None
        if self.correctness.score(turn.text, self.row[self.answer_field]) == 1.0:
            return StepResult(reward=self.discount ** (attempt - 1), done=True)
        if attempt >= self.max_attempts:
            return StepResult(done=True)
        feedback = (
            "That is not correct. Try again."
            if answered
            else ("I could not find your answer. Solve it again and end with the final number.")
        )
        hint = self.row.get(self.hint_field)
        if hint:
            feedback += f" Hint: {hint}"
        return StepResult(observation=[{"role": "user", "content": feedback}])


_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.

    Args:
        expression: the expression to evaluate, e.g. "12 * (7 + 5)".
    """

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            if isinstance(node.op, ast.Pow) and abs(value(node.right)) > 64:
                raise ValueError("exponents above 64 are not allowed")
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)}")

    result = value(ast.parse(expression.strip(), mode="eval").body)
    return str(int(result)) if float(result).is_integer() else f"{result:.6g}"


CALCULATOR_INSTRUCTIONS = (
    "You have a calculator: write <calc>expression</calc> (e.g. <calc>12*7</calc>) and stop; "
    "the result comes back. When you know the answer, give it without a calculator call."
)


class Calculator(Environment):
    """A math question with a calculator tool. A turn with tool calls (read by the episodes'
    ``tool_parser``: ``TagToolCalls()`` for ``<calc>..</calc>``, or ``HermesToolCalls``) gets
    each call's result back; a turn without calls is the answer, rewarded 1.0 when correct.
    Malformed, unknown or failing calls are answered with the error; the episode goes on.

    Args:
        tools: the tool functions (default: ``calculate``).
        timeout_s: seconds a tool call may take.
        instructions: said before the question (how to call the tool).
        prompt_field, answer_field: the row's question and reference answer.
        tool_role: the role of the tool's answer (``"tool"`` where the template knows it;
            ``"user"`` for one that does not).
    """

    def __init__(
        self,
        tools: list[Callable[..., object]] | None = None,
        timeout_s: float = 5.0,
        instructions: str = CALCULATOR_INSTRUCTIONS,
        prompt_field: str = "prompt",
        answer_field: str = "answer",
        tool_role: str = "tool",
    ) -> None:
        self.tools = Tools(tools or [calculate], timeout_s)
        self.instructions = instructions
        self.prompt_field, self.answer_field, self.tool_role = prompt_field, answer_field, tool_role
        self.correctness = MathCorrectness(answer_field)
        self.row: Row = {}

    def tool_schemas(self) -> list[dict[str, object]]:
        return self.tools.schemas

    def reset(self, row: Row, seed: int) -> list[Message]:
        self.row = row
        question = f"{self.instructions}\n\n{row[self.prompt_field]}"
        return [{"role": "user", "content": question}]

    def step(self, turn: Turn) -> StepResult:
        if not turn.tool_calls and not turn.tool_call_errors:  # the answer
            reward = self.correctness.score(turn.text, self.row[self.answer_field])
            return StepResult(reward=reward, done=True)
        answers = list(turn.tool_call_errors)
        errors = len(turn.tool_call_errors)
        for call in turn.tool_calls:
            result = self.tools(call)
            answers.append(result.content)
            errors += result.error
        metrics = {"tool_calls": float(len(answers)), "tool_errors": float(errors)}
        observation = [{"role": self.tool_role, "content": answer} for answer in answers]
        return StepResult(observation=observation, metrics=metrics)
