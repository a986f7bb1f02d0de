"""lit_rl with the libraries researchers already train with, one module per library, each an
optional extra (``pip install lit_rl[<library>]``) tested against the real package.

- ``lit_rl.integrations.reasoning_gym``: any reasoning-gym dataset as rows (``ReasoningGymRows``)
  scored by its own ``score_answer`` (``ReasoningGymReward``).
- ``lit_rl.integrations.textarena``: any single-player TextArena game as an environment.
- ``lit_rl.integrations.skyrl_gym``: any skyrl-gym environment.
- ``lit_rl.integrations.verifiers``: a verifiers environment's own episodes, hosted unchanged.

lit_rl never imports these modules itself: a recipe names them by ``class_path``.
"""


def missing(library: str, extra: str) -> str:
    """The message for an integration whose library is not installed."""
    return (
        f"this integration needs {library}, which is not installed: pip install "
        f"'lit_rl[{extra}]' (in this repository: make train RECIPE=<its recipe> installs it)"
    )
