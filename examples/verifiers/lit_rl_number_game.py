"""A verifiers environment written with verifiers' own API, as a user writes one: a number game
whose ``Env.run`` plays the user (the secret of each task in its data), answering each move
with "higher" or "lower" until the model says it or its turns run out; rewarded 1 for finding
it, by verifiers' own trace scoring. Exports the in-process chat harness lit_rl ships, as the
taskset's default harness (verifiers' own harnesses launch programs through uv).

verifiers imports a taskset by its id as a top-level module: lit_rl finds this one through
``env_dir: examples/verifiers`` (recipes/grpo_verifiers.yaml), as it finds a user's own."""

import random
import re

import verifiers.v1 as vf

from lit_rl.integrations.verifiers import ChatHarness

NUM_TASKS = 1_100  # recipes/grpo_verifiers.yaml: 1000 to train on, 50 held out


def secret(index: int) -> int:
    """Task ``index``'s secret, from 1 to 9 (seeded by the index: the same in every process)."""
    return random.Random(index).randint(1, 9)


class GameData(vf.TaskData):
    secret: int


class GameTask(vf.Task[GameData, vf.State, vf.TaskConfig]):
    pass


class GameTaskset(vf.Taskset[GameTask, vf.TasksetConfig]):
    def load(self):
        for index in range(NUM_TASKS):
            data = GameData(
                prompt="Guess my number from 1 to 9. Answer with one digit.", secret=secret(index)
            )
            yield GameTask(data, self.config.task)


class GameEnvConfig(vf.EnvConfig):
    player: vf.AgentConfig = vf.AgentConfig()


class GameEnv(vf.Env[GameEnvConfig]):
    async def run(self, task, agents):
        found = 0.0
        async with agents.player.interaction(task) as interaction:
            segment = await interaction.turn()
            while not segment.terminated:
                digits = re.findall(r"\d", segment.last_reply or "")
                guess = int(digits[-1]) if digits else 0
                if guess == task.data.secret:
                    found = 1.0
                    break
                hint = "higher" if guess < task.data.secret else "lower"
                segment = await interaction.turn(hint)
        interaction.trace.record_reward("found", found, 1.0)


class GameHarness(ChatHarness):
    pass


__all__ = ["GameEnv", "GameHarness", "GameTaskset"]
