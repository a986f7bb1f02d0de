"""A verifiers environment hosted unchanged, against the real verifiers: its ``Env.run`` plays
the user through verifiers' own agent interaction, every model call comes to lit_rl's engine
(token in, token out), and the reward is verifiers' own trace reward."""

from pathlib import Path

import pytest

from lit_rl.environments import Episodes
from lit_rl.integrations.verifiers import VerifiersEnvironment, VerifiersRows
from lit_rl.rewards import EPISODE_REWARD
from tests.rollout.test_episodes import EOS, ids_of, observation_ids, parts, run

__all__ = ["parts"]
pytestmark = pytest.mark.integrations
# The environment a user writes with verifiers' API, importable as verifiers loads tasksets:
# by a top-level module name.
ENVS = Path(__file__).parent / "verifiers_envs"
CONFIG = {
    "taskset": {"id": "lit_rl_number_game"},
    "player": {"runtime": {"type": "subprocess"}, "max_turns": 3},
}


@pytest.fixture(autouse=True)
def importable_envs(monkeypatch):
    monkeypatch.syspath_prepend(str(ENVS))


def test_the_tasks_are_rows_by_index():
    rows = VerifiersRows(CONFIG, num_train=4, num_val=2)
    assert [row["task_index"] for row in rows.rows("train")] == [0, 1, 2, 3]
    assert [row["task_index"] for row in rows.rows("validation")] == [4, 5]
    assert rows.rows("train")[0]["prompt"].startswith("Guess my number")


def test_the_environments_own_run_plays_the_policy_token_in_token_out(parts):
    # Task 0's secret is 3: "5" gets "lower" from the environment's run, "3" finds it.
    episodes = Episodes(lambda: VerifiersEnvironment(CONFIG), max_turns=3, max_episode_tokens=400)
    rows = [{"prompt": "", "task_index": 0}, {"prompt": "", "task_index": 1}]
    out, engine = run(parts, ["5", "3", "7"], episodes, rows, num_generations=2)
    turn_1, turn_2 = ids_of(parts, "5" + EOS), ids_of(parts, "3" + EOS)
    assert out.ids[0][: out.mask[0].sum() + len(observation_ids(parts, "lower"))].tolist() == (
        turn_1 + observation_ids(parts, "lower") + turn_2
    )
    assert out.fields["prompt"][0].startswith("Guess my number")
    # Task 1's secret is 7: found at the third guess. verifiers' own scoring, per episode.
    assert out.fields[EPISODE_REWARD] == [1.0, 1.0, 1.0, 1.0]
    assert out.stats["turns"].tolist() == [2.0, 2.0, 3.0, 3.0]
    assert [len(r.prompt_ids) for r in engine.requests] == [4, 4, 2]  # one batch per turn


def test_an_episode_out_of_budget_is_truncated_and_unscored(parts):
    episodes = Episodes(lambda: VerifiersEnvironment(CONFIG), max_turns=1, max_episode_tokens=400)
    out, _ = run(parts, ["5", "3"], episodes, [{"prompt": "", "task_index": 0}])
    assert out.truncated.tolist() == [True] and out.fields[EPISODE_REWARD] == [0.0]
