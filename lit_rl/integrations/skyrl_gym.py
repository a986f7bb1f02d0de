"""skyrl-gym's text environments as lit_rl environments.

``SkyRLGymEnvironment`` plays any skyrl-gym environment by its registered name (``gsm8k``,
``gsm8k_multi_turn``, ``aime``, ``search``, ``text2sql``, ...), built per episode with the
``extras`` it reads: from the row (a SkyRL-format row's ``reward_spec``/``extra_info``) or
made from a lit_rl row (its answer as the rule-based ground truth). Each step's reward stays
on its turn, so ``lit_rl.rewards.TurnRewards`` trains each turn on its own reward and
``EpisodeReward`` on their sum. Install with ``pip install lit_rl[skyrl-gym]``.
"""

from typing import Any

from lit_rl.data import MESSAGES
from lit_rl.environments import Environment, Message, Row, StepResult, Turn
from lit_rl.integrations import missing

try:
    import skyrl_gym
    from omegaconf import OmegaConf
    from skyrl_gym.envs.registration import registry
except ImportError as error:
    raise ImportError(missing("skyrl-gym", "skyrl-gym")) from error

PASSED_THROUGH = ("reward_spec", "reward_model", "extra_info", "max_turns")  # SkyRL row fields


class SkyRLGymEnvironment(Environment):
    """One skyrl-gym environment per episode.

    ``reset`` makes ``skyrl_gym.make(env, env_config=env_config, extras=...)`` and returns its
    ``init`` messages (a SkyRL-format row's own messages, else the row's prompt as a user
    message); each turn's text is the action,
    and the environment's observations, reward and done come back as they are. A truncated
    episode earns nothing more (skyrl-gym's environments score each step, or their last).

    Args:
        env: the skyrl-gym environment's registered name.
        env_config: its ``env_config`` (e.g. a search server's URL); ``None``: its default.
        extras: ``extras`` for every episode (e.g. ``{max_turns: 3}``); a row's own
            ``reward_spec``, ``reward_model``, ``extra_info`` and ``max_turns`` are added.
        ground_truth_field: where a row without ``reward_spec`` keeps its answer: the
            episode gets ``reward_spec = {method: rule, ground_truth: row[field]}``.
        prompt_field: the row's question, the first user message.
    """

    def __init__(
        self,
        env: str,
        env_config: dict[str, Any] | None = None,
        extras: dict[str, Any] | None = None,
        ground_truth_field: str | None = "answer",
        prompt_field: str = "prompt",
    ) -> None:
        if env not in registry:
            raise ValueError(f"skyrl-gym has no environment '{env}': use one of {sorted(registry)}")
        # Attribute access, as skyrl-gym's environments read their config (config.search_url).
        self.env_name, self.env_config = env, OmegaConf.create(env_config or {})
        self.extras = dict(extras or {})
        self.ground_truth_field, self.prompt_field = ground_truth_field, prompt_field
        self.env: Any = None

    def reset(self, row: Row, seed: int) -> list[Message]:
        extras = {**self.extras, **{key: row[key] for key in PASSED_THROUGH if key in row}}
        if "reward_spec" not in extras and self.ground_truth_field is not None:
            if self.ground_truth_field not in row:
                raise KeyError(
                    f"SkyRLGymEnvironment reads the ground truth from the row's "
                    f"'{self.ground_truth_field}', but the row has {sorted(row)}: set "
                    "ground_truth_field, or give rows a reward_spec"
                )
            truth = str(row[self.ground_truth_field])
            extras["reward_spec"] = {"method": "rule", "ground_truth": truth}
        self.env = skyrl_gym.make(self.env_name, env_config=self.env_config, extras=extras)
        # A SkyRL-format row's prompt is its messages (the data module keeps them).
        prompt = row.get(MESSAGES) or [{"role": "user", "content": str(row[self.prompt_field])}]
        first, _ = self.env.init(list(prompt))
        return list(first)

    def step(self, turn: Turn) -> StepResult:
        out = self.env.step(turn.text)
        return StepResult(
            observation=list(out["observations"]),
            reward=float(out["reward"]),
            done=bool(out["done"]),
        )

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
