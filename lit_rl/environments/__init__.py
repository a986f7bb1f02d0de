"""Multi-turn environments and tools: what a researcher implements and names by ``class_path``.

An ``Environment`` (or ``AsyncEnvironment``) starts an episode from a dataset row and answers the
model's turns; a ``LoopEnvironment`` runs the episode itself and awaits the ``Model``;
``Episodes`` (a module's ``episodes`` setting) says which one and the budgets;
``lit_rl.rollout.EpisodeSampler`` runs the episodes token in, token out (``ChatRenderer``).
Tools are plain functions (``Tools``); parsers read their calls out of a turn
(``HermesToolCalls``, ``TagToolCalls``). Two environments on math problems ship:
``MathFeedback`` and ``Calculator``. docs/environments.md shows how to write one.
"""

from lit_rl.environments.base import (
    AsyncEnvironment,
    Environment,
    EpisodeResult,
    EpisodeTruncated,
    LoopEnvironment,
    Message,
    Model,
    Row,
    StepResult,
    ToolCall,
    Turn,
)
from lit_rl.environments.chat import ChatRenderer, TemplateError
from lit_rl.environments.episodes import Episodes
from lit_rl.environments.math import Calculator, MathFeedback, calculate
from lit_rl.environments.parsers import HermesToolCalls, ParsedCalls, TagToolCalls, ToolCallParser
from lit_rl.environments.tools import ToolResult, Tools

__all__ = [
    "AsyncEnvironment",
    "Calculator",
    "ChatRenderer",
    "Environment",
    "EpisodeResult",
    "EpisodeTruncated",
    "Episodes",
    "HermesToolCalls",
    "LoopEnvironment",
    "MathFeedback",
    "Message",
    "Model",
    "ParsedCalls",
    "Row",
    "StepResult",
    "TagToolCalls",
    "TemplateError",
    "ToolCall",
    "ToolCallParser",
    "ToolResult",
    "Tools",
    "Turn",
    "calculate",
]
