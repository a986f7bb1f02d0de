"""Multi-turn environments and tools: what a researcher implements and names by ``class_path``.

An ``Environment`` (or ``AsyncEnvironment``) starts an episode from a dataset row and answers the
model's turns; ``Episodes`` (a module's ``episodes`` setting) says which one and the budgets;
``lit_rl.rollout.EpisodeSampler`` runs the episodes token in, token out (``ChatRenderer``).
Tools are plain functions (``Tools``); parsers read their calls out of a turn
(``HermesToolCalls``, ``TagToolCalls``). Two environments on math problems ship:
``MathFeedback`` and ``Calculator``. docs/environments.md shows how to write one.
"""

from lit_rl.environments.base import (
    AsyncEnvironment,
    Environment,
    Message,
    Row,
    StepResult,
    ToolCall,
    Turn,
)
from lit_rl.environments.chat import ChatRenderer, TemplateError
from lit_rl.environments.episodes import EPISODE_REWARD, EpisodeReward, Episodes
from lit_rl.environments.math import Calculator, MathFeedback, calculate
from lit_rl.environments.parsers import HermesToolCalls, ParsedCalls, TagToolCalls, ToolCallParser
from lit_rl.environments.tools import ToolResult, Tools

__all__ = [
    "EPISODE_REWARD",
    "AsyncEnvironment",
    "Calculator",
    "ChatRenderer",
    "Environment",
    "EpisodeReward",
    "Episodes",
    "HermesToolCalls",
    "MathFeedback",
    "Message",
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
