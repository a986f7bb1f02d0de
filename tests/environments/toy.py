"""Environments and an engine for the episode tests: what happens is fixed in advance, so every
token of an episode can be checked."""

import asyncio

import torch

from lit_rl.environments import AsyncEnvironment, Environment, StepResult, Turn
from lit_rl.rollout import Generation, GenerationRequest, InProcessEngine


class TurnEngine(InProcessEngine):
    """Answers a conversation whose k-th turn is due with ``turns[k]`` (the last one again past
    the end), then an EOS when ``stop``, cut to the request's ``max_new_tokens``. The logprob
    of token t of turn k is ``-(100 k + t + 1) / 1000``, so each kept logprob says where it
    came from. Records every request."""

    name = "TurnEngine"

    def __init__(self, tokenizer, turns: list[str], stop: bool = True) -> None:
        super().__init__()
        self.tokenizer, self.turns, self.stop = tokenizer, turns, stop
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        rows = []
        for ids, mask in zip(request.prompt_ids, request.prompt_mask.bool(), strict=True):
            turn = self.tokenizer.decode(ids[mask]).count("<|im_start|>assistant") - 1
            text = self.turns[min(turn, len(self.turns) - 1)]
            row = self.tokenizer(text, add_special_tokens=False).input_ids
            row = (row + [request.eos_token_ids[0]] * self.stop)[: request.sampling.max_new_tokens]
            logprobs = [-(100 * turn + t + 1) / 1000 for t in range(len(row))]
            rows += [(row, logprobs)] * request.num_generations
        width = max(len(row) for row, _ in rows)
        ids = torch.full((len(rows), width), request.pad_token_id)
        logprobs = torch.zeros(len(rows), width)
        for i, (row, values) in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            logprobs[i, : len(row)] = torch.tensor(values)
        return self.answer(ids, logprobs)


class Guess(Environment):
    """The row's prompt; a turn that contains the first character of the row's ``answer``
    ends the episode with reward 1 (a random tiny model gets some right), any other is answered "no {seed % 10}, again" (the seed shows that resets replay).
    Every instance is kept in ``instances``."""

    instances: list["Guess"] = []

    def __init__(self, observation: str = "no {digit}, again") -> None:
        self.observation = observation
        self.row: dict = {}
        self.seed: int | None = None
        self.turns: list[Turn] = []
        self.closed = False
        Guess.instances.append(self)

    def reset(self, row, seed):
        self.row, self.seed = row, seed
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, turn):
        self.turns.append(turn)
        if str(self.row["answer"])[:1] in turn.text:
            return StepResult(reward=1.0, done=True)
        text = self.observation.format(digit=self.seed % 10)
        return StepResult(observation=[{"role": "user", "content": text}], metrics={"misses": 1.0})

    def close(self):
        self.closed = True


class SecretNumber(Environment):
    """A secret digit drawn from the seed (its last digit; the prompt shows the seed); a turn
    that says it earns 1. Episodes with the same seed play the same game."""

    def reset(self, row, seed):
        self.secret = str(seed % 10)
        return [{"role": "user", "content": f"{row['prompt']} game {seed}"}]

    def step(self, turn):
        return StepResult(reward=float(self.secret in turn.text), done=True)


class TextLength(Environment):
    """Each turn earns ``len(turn.text) % 3`` (a spread of rewards from random text); "again"
    after each. Every instance is kept in ``instances``, with its turns' rewards."""

    instances: list["TextLength"] = []

    def __init__(self) -> None:
        self.rewards: list[float] = []
        TextLength.instances.append(self)

    def reset(self, row, seed):
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, turn):
        self.rewards.append(float(len(turn.text) % 3))
        return StepResult([{"role": "user", "content": "again"}], reward=self.rewards[-1])


class AsyncGuess(AsyncEnvironment):
    """``Guess`` answered asynchronously: every episode's step waits until all ``expected``
    episodes are inside their step, so answering them one after the other would time out."""

    expected = 0
    waiting = 0

    def __init__(self) -> None:
        self.inner = Guess()

    async def reset(self, row, seed):
        return self.inner.reset(row, seed)

    async def step(self, turn):
        AsyncGuess.waiting += 1
        async with asyncio.timeout(5):
            while AsyncGuess.waiting < AsyncGuess.expected:
                await asyncio.sleep(0.001)
        result = self.inner.step(turn)
        await asyncio.sleep(0)
        return result
