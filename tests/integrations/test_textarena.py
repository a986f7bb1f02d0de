"""TextArena's games through TextArenaGame, against the real textarena: the group's seed is
the game, Python's global random is the process's own again after every call, a game lit_rl
cuts short is scored by the game's own measure, and a kill-and-resume of a run on TextArena's
episodes equals the uninterrupted run bit for bit."""

import random
import signal

import pytest

from lit_rl.environments import Episodes, Turn
from lit_rl.integrations.textarena import TextArenaGame
from tests.reliability import test_resume
from tests.rollout.test_episodes import parts, run

__all__ = ["parts"]  # the fixture
pytestmark = pytest.mark.integrations


def _secret(game: TextArenaGame) -> int:
    """The secret of a GuessTheNumber game, found by bisection through its answers."""
    low, high = 1, 20
    while True:
        guess = (low + high) // 2
        result = game.step(Turn(f"[{guess}]", 0))
        if result.done:
            return guess
        text = result.observation[0]["content"]
        low, high = (guess + 1, high) if "higher" in text else (low, guess - 1)


def test_the_same_seed_is_the_same_game_and_the_global_random_is_left_alone():
    random.seed(1234)
    before = random.getstate()
    games = [TextArenaGame("GuessTheNumber-v0") for _ in range(3)]
    first = [game.reset({}, seed) for game, seed in zip(games, [7, 7, 8], strict=True)]
    assert first[0] == first[1] and first[0][0]["role"] == "system"
    assert "guess the number between 1 and 20" in first[0][1]["content"]
    assert random.getstate() == before  # TextArena reseeded its own generator, not ours
    # Interleaved with another game, a game plays as it does alone.
    alone = TextArenaGame("GuessTheNumber-v0")
    alone.reset({}, 7)
    assert games[1].step(Turn("[3]", 0)) == games[0].step(Turn("[3]", 0))
    games[2].step(Turn("[3]", 0))
    assert games[0].step(Turn("[17]", 1)) == games[1].step(Turn("[17]", 1))
    secrets = [_secret(game) for game in games]
    assert secrets[0] == secrets[1] == _secret(alone)
    assert random.getstate() == before


def test_a_won_game_pays_its_reward_and_a_cut_one_its_completion():
    game = TextArenaGame("GuessTheNumber-v0")
    game.reset({}, 3)
    secret = _secret(game)
    assert 1 <= secret <= 20
    won = TextArenaGame("GuessTheNumber-v0")
    won.reset({}, 3)
    result = won.step(Turn(f"I say [{secret}]", 0))
    assert result.done and result.reward == 1.0
    cut = TextArenaGame("GuessTheNumber-v0")
    cut.reset({}, 3)
    far = 1 if secret > 10 else 20
    assert not cut.step(Turn(f"[{far}]", 0)).done
    # TextArena's completion of an unfinished game: how close the best guess came.
    score = cut.truncate()
    assert 0.0 <= score.reward < 1.0 and score.metrics == {"unfinished": 1.0}
    assert score.reward == pytest.approx(1 - abs(far - secret) / 19)


def test_the_g_episodes_of_a_row_play_its_game(parts):
    # Rows that carry their seed (lit_rl.data.EnvironmentRows): the 3 episodes of each row
    # are posed the same game, and the scripted engine's guesses win the same games.
    episodes = Episodes(lambda: TextArenaGame("GuessTheNumber-v0"), max_turns=2)
    rows = [{"prompt": "", "seed": 11}, {"prompt": "", "seed": 12}]
    out, _ = run(parts, ["[10]", "[5]"], episodes, rows, num_generations=3)
    prompts = [
        tuple(r[m.bool()].tolist()) for r, m in zip(out.prompt_ids, out.prompt_mask, strict=True)
    ]
    assert len(set(prompts[:3])) == len(set(prompts[3:])) == 1
    rewards = out.fields["episode_reward"]
    assert rewards[:3] == [rewards[0]] * 3 and rewards[3:] == [rewards[3]] * 3
    assert out.stats["turns"].max() <= 2


def test_kill_and_resume_on_textarena_equals_the_uninterrupted_run(tiny_model_dir, tmp_path):
    names = ("uninterrupted", "killed")
    runs = test_resume.prepare("grpo", True, tiny_model_dir, tmp_path, *names, episodes=True)
    for out in runs.values():  # TextArena's game instead of the toy environment
        config = test_resume.yaml.safe_load((out / "config.yaml").read_text())
        model = config["model"]["init_args"]
        model["episodes"]["environment"] = {
            "class_path": "lit_rl.integrations.textarena.TextArenaGame",
            "init_args": {"env_id": "GuessTheNumber-v0"},
        }
        model["episodes"] |= {"max_episode_tokens": 200, "max_observation_tokens": 30}
        # A random tiny model never wins: the last turn's length adds a spread to learn from.
        model["reward"] = {
            "class_path": "lit_rl.rewards.WeightedSum",
            "init_args": {
                "rewards": [
                    {"class_path": "lit_rl.rewards.EpisodeReward"},
                    {
                        "class_path": "tests.byo_reward.ContainsTargetCharacter",
                        "init_args": {"field": "seed"},
                    },
                ]
            },
        }
        model["max_completion_length"] = 4
        config["data"]["init_args"] |= {
            "train_data": {
                "class_path": "lit_rl.data.EnvironmentRows",
                "init_args": {"num_train": 6, "num_val": 2},
            },
            "prompt_field": None,
        }
        (out / "config.yaml").write_text(test_resume.yaml.safe_dump(config))
    every = test_resume.STEPS_PER_BATCH["grpo"]
    first, killed = test_resume.fit_side_by_side(
        (runs["uninterrupted"] / "config.yaml",),
        (
            runs["killed"] / "config.yaml",
            *test_resume.probe("KillAfterStep", step=test_resume.KILLED_AT * every),
        ),
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = test_resume.fit(runs["killed"] / "config.yaml", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    test_resume.assert_same_run(runs["uninterrupted"], runs["killed"])
    rows = test_resume.steps(runs["uninterrupted"])
    assert max(row["rollout/episode/turns"] for row in rows) > 1
