"""The episode contract's newer parts, without a Trainer, on the tiny model's character tokenizer
and the scripted ``TurnEngine``: one event loop for the whole rollout (a task an async
environment starts in ``reset`` is alive in ``step``); a loop environment that awaits the model,
token in, token out; a truncated episode scored by its environment; each turn's reward on its
last sampled token."""

import asyncio

import pytest

from lit_rl.environments import (
    AsyncEnvironment,
    Environment,
    EpisodeResult,
    Episodes,
    EpisodeTruncated,
    LoopEnvironment,
    StepResult,
)
from lit_rl.rewards import EPISODE_REWARD, TURN_ENDS, TURN_REWARDS
from tests.rollout.test_episodes import EOS, ROW, ids_of, observation_ids, parts, run

__all__ = ["parts"]  # the fixture, shared with test_episodes


class Heartbeat(AsyncEnvironment):
    """Starts a background task in ``reset`` that ticks until ``close``; ``step`` answers with
    the ticks so far. On a loop per call (``asyncio.run`` each), the task would be cancelled
    when ``reset``'s loop closes and never tick in ``step``."""

    def __init__(self) -> None:
        self.ticks = 0
        self.task: asyncio.Task | None = None

    async def reset(self, row, seed):
        async def tick() -> None:
            while True:
                self.ticks += 1
                await asyncio.sleep(0)

        self.task = asyncio.create_task(tick())
        await asyncio.sleep(0)
        return [{"role": "user", "content": row["prompt"]}]

    async def step(self, turn):
        before = self.ticks
        await asyncio.sleep(0.01)  # the background task runs meanwhile
        alive = self.task is not None and not self.task.done() and self.ticks > before
        return StepResult(reward=float(alive), done=turn.index == 1, observation=[_user("again")])

    async def close(self):
        assert self.task is not None
        self.task.cancel()


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_a_task_an_async_environment_starts_in_reset_lives_through_its_steps(parts):
    out, _ = run(parts, ["a", "b"], Episodes(Heartbeat, max_turns=2), [ROW], num_generations=2)
    assert out.fields[TURN_REWARDS] == [[1.0, 1.0], [1.0, 1.0]]
    assert out.fields[EPISODE_REWARD] == [2.0, 2.0]


class Counting(LoopEnvironment):
    """Owns its loop: asks the model, answers "count" and asks again until the model says
    "stop" or ``turns`` answers are in; each answer earns ``0.1 x`` its index, and the episode
    ``bonus`` at the end. Records every turn and whether lit_rl truncated it."""

    instances: list["Counting"] = []

    def __init__(self, turns: int = 3, bonus: float = 1.0, catch: bool = True) -> None:
        self.turns, self.bonus, self.catch = turns, bonus, catch
        self.seen: list[str] = []
        self.truncated = False
        Counting.instances.append(self)

    async def run(self, row, seed, model):
        messages = [_user(row["prompt"])]
        try:
            for _ in range(self.turns):
                turn = await model(messages)
                self.seen.append(turn.text)
                if "stop" in turn.text:
                    break
                messages = [*messages, {"role": "assistant", "content": turn.text}, _user("count")]
        except EpisodeTruncated:
            self.truncated = True
            if not self.catch:
                raise
        rewards = [0.1 * index for index in range(len(self.seen))]
        return EpisodeResult(reward=self.bonus, turn_rewards=rewards, metrics={"answers": 1.0})


def _counting(**settings):
    Counting.instances.clear()
    return lambda: Counting(**settings)


def test_a_loop_environment_is_hosted_token_in_token_out(parts):
    episodes = Episodes(_counting(turns=3), max_turns=5, max_episode_tokens=200)
    out, engine = run(parts, ["one", "two", "stop"], episodes, [ROW])
    turns = [ids_of(parts, text + EOS) for text in ("one", "two", "stop")]
    count = observation_ids(parts, "count")
    assert out.ids[0].tolist() == turns[0] + count + turns[1] + count + turns[2]
    assert (
        out.mask[0].tolist()
        == [True] * 4 + [False] * len(count) + [True] * 4 + [False] * len(count) + [True] * 5
    )
    # The prompt is the environment's first message, rendered by the chat template.
    prompt = out.prompt_ids[0][out.prompt_mask[0].bool()].tolist()
    text = parts[0].apply_chat_template(
        [_user(ROW["prompt"])], add_generation_prompt=True, tokenize=False
    )
    assert prompt == ids_of(parts, text)
    assert len(engine.requests) == 3 and Counting.instances[0].seen == ["one", "two", "stop"]
    assert not out.truncated[0]
    # Each answer's reward on its turn (0, .1, .2), the bonus on the last: its last sampled token.
    assert out.fields[TURN_REWARDS] == [pytest.approx([0.0, 0.1, 1.2])]
    ends = [3, 3 + len(count) + 4, 3 + 2 * len(count) + 4 + 5]  # 4, 4 and 5 tokens a turn
    assert out.fields[TURN_ENDS] == [ends] and all(out.mask[0][end] for end in ends)
    assert out.fields[EPISODE_REWARD] == [pytest.approx(1.3)]
    assert out.stats["answers"].tolist() == [1.0] and out.stats["turns"].tolist() == [3.0]


def test_the_episodes_of_loop_environments_share_each_engine_batch(parts):
    episodes = Episodes(_counting(turns=2), max_turns=5)
    out, engine = run(parts, ["one", "two"], episodes, [ROW, ROW], num_generations=2)
    assert [len(request.prompt_ids) for request in engine.requests] == [4, 4]
    assert out.stats["turns"].tolist() == [2.0] * 4


@pytest.mark.parametrize("catch", [True, False])
def test_a_loop_environment_out_of_turns_is_truncated_and_may_score_it(parts, catch):
    episodes = Episodes(_counting(turns=9, catch=catch), max_turns=2)
    out, engine = run(parts, ["one", "two", "three"], episodes, [ROW])
    assert len(engine.requests) == 2 and Counting.instances[0].truncated
    assert out.truncated.tolist() == [True]
    # Caught: the environment's account of the truncated episode; let through: nothing.
    assert out.fields[EPISODE_REWARD] == [pytest.approx(1.1 if catch else 0.0)]
    assert out.stats["truncated_reward"].tolist() == [1.0 if catch else 0.0]  # the bonus


class Rewriting(LoopEnvironment):
    """Changes its first message after the model's first turn."""

    async def run(self, row, seed, model):
        turn = await model([_user("first")])
        await model([_user("FIRST"), {"role": "assistant", "content": turn.text}, _user("?")])
        return EpisodeResult()


def test_a_conversation_whose_past_changed_is_refused(parts):
    with pytest.raises(ValueError, match=r"changed message 0 since the model's last turn"):
        run(parts, ["one"], Episodes(Rewriting, max_turns=3), [ROW])


class OneShot(Environment):
    """Wrong until the model says the answer; scores a truncated episode 0.25 (the game's own
    rule for an unfinished game)."""

    def reset(self, row, seed):
        return [_user(row["prompt"])]

    def step(self, turn):
        if "5" in turn.text:
            return StepResult(reward=1.0, done=True)
        return StepResult(reward=-0.1, observation=[_user("no")])

    def truncate(self):
        return StepResult(reward=0.25, metrics={"unfinished": 1.0})


def test_a_truncated_step_episode_is_scored_by_its_environment_on_its_last_turn(parts):
    out, _ = run(parts, ["4", "3", "5"], Episodes(OneShot, max_turns=2), [ROW])
    assert out.truncated.tolist() == [True]
    assert out.fields[TURN_REWARDS] == [[-0.1, pytest.approx(-0.1 + 0.25)]]
    assert out.fields[EPISODE_REWARD] == [pytest.approx(0.05)]
    assert out.stats["unfinished"].tolist() == [1.0]
    # Logged: what truncation was scored, the last turn's reward and the ones before it.
    assert out.stats["truncated_reward"].tolist() == [0.25]
    assert out.stats["last_turn_reward"].tolist() == [pytest.approx(0.15)]
    assert out.stats["earlier_turns_reward"].tolist() == [pytest.approx(-0.1)]
    finished, _ = run(parts, ["4", "5"], Episodes(OneShot, max_turns=2), [ROW])
    assert finished.fields[TURN_REWARDS] == [[-0.1, 1.0]] and "unfinished" not in finished.stats
    assert "truncated_reward" not in finished.stats


def test_first_messages_that_leave_no_room_for_the_episode_are_refused(parts):
    # The environment's own prompt is what counts against the model's context (2048 tokens
    # here): 2000 characters of it and an episode budget of 100 do not fit.
    episodes = Episodes(_counting(), max_turns=2, max_episode_tokens=100)
    with pytest.raises(ValueError, match=r"first messages are \d+ tokens .* an episode needs \d+, "
                       r"more than the model's context of 2048"):  # fmt: skip
        run(parts, ["one"], episodes, [{**ROW, "prompt": "x" * 2000}])
