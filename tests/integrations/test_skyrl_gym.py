"""skyrl-gym's environments through SkyRLGymEnvironment, against the real skyrl_gym: each
step's reward stays on its turn (gsm8k_multi_turn: a wrong then a right answer is 0.067 then
1.0, not one 1.067), rows without a reward_spec get one from their answer."""

import pytest

from lit_rl.environments import Episodes, Turn
from lit_rl.integrations.skyrl_gym import SkyRLGymEnvironment
from lit_rl.rewards import TURN_REWARDS
from tests.rollout.test_episodes import parts, run

__all__ = ["parts"]
pytestmark = pytest.mark.integrations

ROW = {"prompt": "Natalia sold 48 clips in April and half as many in May. Total?", "answer": "72"}


def test_each_step_reward_is_its_turns():
    env = SkyRLGymEnvironment("gsm8k_multi_turn", extras={"max_turns": 3})
    first = env.reset(ROW, seed=0)
    assert first == [{"role": "user", "content": ROW["prompt"]}]
    wrong = env.step(Turn("I think #### 70", 0))
    assert not wrong.done and wrong.reward == pytest.approx(0.2 / 3)  # formatted, wrong
    assert wrong.observation and wrong.observation[0]["role"] == "user"
    right = env.step(Turn("#### 72", 1))
    assert right.done and right.reward == 1.0


def test_through_the_episode_sampler_the_turn_rewards_are_skyrls(parts):
    episodes = Episodes(
        lambda: SkyRLGymEnvironment("gsm8k_multi_turn", extras={"max_turns": 3}),
        max_turns=3,
        max_episode_tokens=400,
    )
    out, _ = run(parts, ["#### 70", "#### 72"], episodes, [ROW], num_generations=2)
    assert out.fields[TURN_REWARDS] == [[pytest.approx(0.2 / 3), 1.0]] * 2
    assert not out.truncated.any()


def test_a_row_with_its_own_reward_spec_and_an_unknown_environment():
    env = SkyRLGymEnvironment("gsm8k")
    env.reset({"prompt": "2+2?", "reward_spec": {"method": "rule", "ground_truth": "4"}}, 0)
    assert env.step(Turn("#### 4", 0)).reward == 1.0
    with pytest.raises(ValueError, match="skyrl-gym has no environment 'gsm9k'"):
        SkyRLGymEnvironment("gsm9k")
    with pytest.raises(KeyError, match="reads the ground truth from the row's 'answer'"):
        SkyRLGymEnvironment("gsm8k").reset({"prompt": "2+2?"}, 0)


def test_a_skyrl_format_dataset_plugs_in_as_it_is(tiny_model_dir, tmp_path):
    # SkyRL's own rows: the prompt as messages, the rule's ground truth in reward_spec.
    import json

    from lit_rl.data import PromptDataModule

    row = {
        "prompt": [{"role": "user", "content": "What is 6 times 7? End with #### <number>."}],
        "env_class": "gsm8k",
        "reward_spec": {"method": "rule", "ground_truth": "42"},
    }
    path = tmp_path / "skyrl.jsonl"
    path.write_text(json.dumps(row) + "\n")
    data = PromptDataModule(str(tiny_model_dir), str(path), prompt_field="prompt", batch_size=1)
    data.setup("fit")
    (prepared,) = data.train_rows
    env = SkyRLGymEnvironment("gsm8k", ground_truth_field=None)
    assert env.reset(prepared, 0) == row["prompt"]
    assert env.step(Turn("so #### 42", 0)).reward == 1.0
