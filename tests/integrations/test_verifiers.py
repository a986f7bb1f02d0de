"""A verifiers environment hosted unchanged, against the real verifiers: its ``Env.run`` plays
the user through verifiers' own agent interaction, every model call comes to lit_rl's engine
(token in, token out), and the reward is verifiers' own trace reward."""

import sys
from pathlib import Path

import pytest

from lit_rl.environments import Episodes
from lit_rl.integrations.verifiers import VerifiersEnvironment, VerifiersRows
from lit_rl.rewards import EPISODE_REWARD
from tests.rollout.test_episodes import EOS, ids_of, observation_ids, parts, run

__all__ = ["parts"]
pytestmark = pytest.mark.integrations
# The environment a user writes with verifiers' API (the one recipes/grpo_verifiers.yaml
# trains on), found by its taskset id in env_dir.
ENV_DIR = str(Path(__file__).parents[2] / "examples" / "verifiers")
CONFIG = {
    "taskset": {"id": "lit_rl_number_game"},
    "player": {"runtime": {"type": "subprocess"}, "max_turns": 3},
}


@pytest.fixture(autouse=True)
def restored_sys_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))


def environment() -> VerifiersEnvironment:
    return VerifiersEnvironment(CONFIG, env_dir=ENV_DIR)


def task_with_secret(value: int) -> int:
    from lit_rl_number_game import secret  # importable once env_dir is given

    return next(index for index in range(100) if secret(index) == value)


def test_the_tasks_are_rows_by_index():
    rows = VerifiersRows(CONFIG, num_train=4, num_val=2, env_dir=ENV_DIR)
    assert [row["task_index"] for row in rows.rows("train")] == [0, 1, 2, 3]
    assert [row["task_index"] for row in rows.rows("validation")] == [4, 5]
    assert rows.rows("train")[0]["prompt"].startswith("Guess my number")


def test_an_environment_dir_that_is_not_a_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="env_dir .* is not a folder"):
        VerifiersEnvironment(CONFIG, env_dir=str(tmp_path / "missing"))


def test_the_environments_own_run_plays_the_policy_token_in_token_out(parts):
    # The first task's secret is 3: "5" gets "lower" from the environment's run, "3" finds it.
    episodes = Episodes(environment, max_turns=3, max_episode_tokens=400)
    environment()  # env_dir on the path: the test reads the secrets
    rows = [{"prompt": "", "task_index": task_with_secret(n)} for n in (3, 7)]
    out, engine = run(parts, ["5", "3", "7"], episodes, rows, num_generations=2)
    turn_1, turn_2 = ids_of(parts, "5" + EOS), ids_of(parts, "3" + EOS)
    assert out.ids[0][: out.mask[0].sum() + len(observation_ids(parts, "lower"))].tolist() == (
        turn_1 + observation_ids(parts, "lower") + turn_2
    )
    assert out.fields["prompt"][0].startswith("Guess my number")
    # The second task's secret is 7: found at the third guess. verifiers' own scoring, per episode.
    assert out.fields[EPISODE_REWARD] == [1.0, 1.0, 1.0, 1.0]
    assert out.stats["turns"].tolist() == [2.0, 2.0, 3.0, 3.0]
    assert [len(r.prompt_ids) for r in engine.requests] == [4, 4, 2]  # one batch per turn


def test_an_episode_out_of_budget_is_truncated_and_unscored(parts):
    episodes = Episodes(environment, max_turns=1, max_episode_tokens=400)
    environment()
    out, _ = run(parts, ["5", "3"], episodes, [{"prompt": "", "task_index": task_with_secret(3)}])
    assert out.truncated.tolist() == [True] and out.fields[EPISODE_REWARD] == [0.0]
