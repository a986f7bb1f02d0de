"""The ``lit-rl`` commands beside Lightning's ``fit`` and ``validate``: each module has a
``HELP`` line, ``add_arguments(parser)`` and ``run(args)``."""

from lit_rl.commands import export, generate, plot
from lit_rl.commands.policy import LoadedPolicy, load_policy

COMMANDS = {"generate": generate, "export": export, "plot": plot}

__all__ = ["COMMANDS", "LoadedPolicy", "load_policy"]
