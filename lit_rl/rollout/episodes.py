"""EpisodeSampler: rollouts as multi-turn episodes against an environment, token in, token out.

One episode per row (G per prompt, each with its own environment instance). Every turn, the
live episodes' conversations so far go to the engine as one batch; each row keeps the ids the
engine sampled (mask 1) and the engine's logprobs of them; the environment answers each turn,
and its observation is rendered alone and appended (mask 0, ``lit_rl.environments.ChatRenderer``).
The result is a ``Completions`` like a single turn's: everything after the first prompt is the
completion, so every algorithm, estimator, loss and statistic runs on it unchanged and counts
the sampled tokens only.
"""

import asyncio
import inspect
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lit_rl.environments import (
    EPISODE_REWARD,
    AsyncEnvironment,
    ChatRenderer,
    Environment,
    Episodes,
    Message,
    ParsedCalls,
    StepResult,
    Turn,
)
from lit_rl.rollout.completions import Completions, CompletionSampler, WholeWeights
from lit_rl.rollout.engine import RolloutEngine
from lit_rl.rollout.request import SamplingParams

ENVIRONMENT_SPAN = "⟦{}⟧"  # how sample panels mark the tokens the environment wrote


@dataclass
class EpisodeTokens:
    """One episode's tokens as they grow: the first prompt, then the model's turns (sampled)
    and the environment's answers."""

    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: int = 0
    reward: float = 0.0
    done: bool = False
    last_text: str = ""
    metrics: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def append(self, ids: list[int], sampled: bool, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.sampled += [sampled] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


class EpisodeSampler(CompletionSampler):
    """A ``CompletionSampler`` whose rollouts are episodes (``Episodes``). Its ``Completions``
    carry, per row: the environment's reward as the field ``episode_reward`` (read by
    ``lit_rl.environments.EpisodeReward``), the last turn's text for other rewards, and the
    statistics ``turns``, ``environment_tokens``, ``observations_cut`` and what the
    environment reports (``tool_calls``, ``tool_errors``), logged as ``rollout/episode/*``.

    Args (after ``CompletionSampler``'s):
        episodes: the environment and the budgets.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        policy: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_ids: tuple[int, ...],
        sampling: SamplingParams,
        episodes: Episodes,
        whole_weights: WholeWeights = nullcontext,
    ) -> None:
        super().__init__(engine, policy, tokenizer, eos_token_ids, sampling, whole_weights)
        self.episodes = episodes
        self.renderer = ChatRenderer(tokenizer, eos_token_ids)  # refuses a rewriting template

    @property
    def max_rollout_tokens(self) -> int:
        return self.episodes.max_episode_tokens

    def rollouts(
        self, batch: dict[str, Any], num_generations: int, version: int, greedy: bool = False
    ) -> Completions:
        """``num_generations`` episodes of each of ``batch``'s rows (its list fields), each
        environment reset with a seed drawn from torch's RNG (the rollout's seeded stream)."""
        names = [key for key, values in batch.items() if isinstance(values, list)]
        columns = zip(*(batch[name] for name in names), strict=True)
        rows = [dict(zip(names, values, strict=True)) for values in columns]
        rows = [row for row in rows for _ in range(num_generations)]
        seeds = torch.randint(0, 2**62, (len(rows),)).tolist()
        environments = [self.episodes.environment() for _ in rows]
        try:
            first = self._answer(environments, "reset", list(zip(rows, seeds, strict=True)))
            episodes = [
                EpisodeTokens(self.renderer.prompt(messages, env.tool_schemas()))
                for env, messages in zip(environments, first, strict=True)
            ]
            with self.awake(version):  # every turn on weights gathered and woken once
                weights = self._play(environments, episodes, version, greedy)
        finally:
            self._answer(environments, "close", [() for _ in environments])
        return self._completions(episodes, *weights).to(batch["input_ids"].device)

    def _play(
        self,
        environments: list[Environment | AsyncEnvironment],
        episodes: list[EpisodeTokens],
        version: int,
        greedy: bool,
    ) -> tuple[int, float]:
        """Turns until every episode is over; the version and fingerprint of the weights that
        sampled them (one sync: every turn samples at ``version``)."""
        budget, max_new = self.episodes.max_episode_tokens, self.sampling.max_new_tokens
        parse = self.episodes.tool_parser
        live = list(range(len(episodes)))
        weights = (version, float("nan"))
        while live:
            limits = [min(max_new, budget - len(episodes[i].ids)) for i in live]
            prompt_ids, prompt_mask = self._left_padded(
                [episodes[i].prompt + episodes[i].ids for i in live]
            )
            sampled = self.sample(prompt_ids, prompt_mask, 1, version, greedy, max(limits))
            weights = (sampled.weights_version, sampled.weights_fingerprint)
            turns = []
            for row, (i, limit) in enumerate(zip(live, limits, strict=True)):
                length = min(int(sampled.mask[row].sum()), limit)
                ids = sampled.ids[row, :length].tolist()
                episodes[i].append(ids, True, sampled.logprobs[row, :length].tolist())
                text = self.decode(ids)
                calls = parse(text) if parse is not None else ParsedCalls()
                stopped = bool(ids) and ids[-1] in self.eos_token_ids
                index = episodes[i].turns
                turns.append(Turn(text, index, calls.calls, calls.errors, stopped))
            results = self._answer([environments[i] for i in live], "step", [(t,) for t in turns])
            live = [
                i
                for i, turn, result in zip(live, turns, results, strict=True)
                if self._continue(episodes[i], turn, result)
            ]
        return weights

    def _continue(self, episode: EpisodeTokens, turn: Turn, result: StepResult) -> bool:
        """Record the environment's answer to ``turn``; whether the episode goes on (its
        observation appended)."""
        episode.turns += 1
        episode.reward += float(result.reward)
        episode.last_text = turn.text
        for name, value in result.metrics.items():
            episode.metrics[name] += float(value)
        remaining = self.episodes.max_episode_tokens - len(episode.ids)
        if result.done:
            episode.done = True
            return False
        if episode.turns >= self.episodes.max_turns or remaining == 0:
            return False  # truncated: the turn cap, or the budget spent by the turn
        observation = self.renderer.observation(
            self._cut(result.observation, episode), turn.stopped
        )
        episode.append(observation[:remaining], sampled=False)
        return len(observation) < remaining  # one that reaches the budget leaves no turn

    def _cut(self, messages: list[Message], episode: EpisodeTokens) -> list[Message]:
        """Each message's content cut to ``max_observation_tokens``."""
        limit = self.episodes.max_observation_tokens
        if limit is None:
            return messages
        cut = []
        for message in messages:
            ids = self.tokenizer(message["content"], add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                message = {**message, "content": self.tokenizer.decode(ids[:limit])}
                episode.metrics["observations_cut"] += 1
            cut.append(message)
        return cut

    @staticmethod
    def _answer(
        environments: list[Any], method: str, arguments: list[tuple[Any, ...]]
    ) -> list[Any]:
        """``method`` of every environment with its arguments: in turn for synchronous ones,
        concurrently on one event loop for ``AsyncEnvironment``s."""
        calls = [
            getattr(env, method)(*args) for env, args in zip(environments, arguments, strict=True)
        ]
        if calls and inspect.isawaitable(calls[0]):

            async def together() -> list[Any]:
                return await asyncio.gather(*calls)

            return asyncio.run(together())
        return calls

    def _left_padded(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            if sequence:
                ids[row, -len(sequence) :] = torch.tensor(sequence)
                mask[row, -len(sequence) :] = 1
        return ids, mask

    def _completions(
        self, episodes: list[EpisodeTokens], version: int, fingerprint: float
    ) -> Completions:
        n = len(episodes)
        prompt_ids, prompt_mask = self._left_padded([e.prompt for e in episodes])
        length = max(max((len(e.ids) for e in episodes), default=0), 1)
        ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.bool)
        logprobs = torch.zeros((n, length), dtype=torch.float32)
        for row, e in enumerate(episodes):
            ids[row, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[row, : len(e.ids)] = torch.tensor(e.sampled, dtype=torch.bool)
            logprobs[row, : len(e.ids)] = torch.tensor(e.logprobs, dtype=torch.float32)
        metric_names = sorted({name for e in episodes for name in e.metrics})
        stats = {
            "turns": torch.tensor([float(e.turns) for e in episodes]),
            "environment_tokens": torch.tensor([float(e.sampled.count(False)) for e in episodes]),
            **{
                name: torch.tensor([e.metrics.get(name, 0.0) for e in episodes])
                for name in metric_names
            },
        }
        return Completions(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            ids=ids,
            mask=mask,
            texts=[e.last_text for e in episodes],
            logprobs=logprobs,
            truncated=torch.tensor([not e.done for e in episodes]),
            weights_version=version,
            weights_fingerprint=fingerprint,
            transcripts=[self._transcript(e) for e in episodes],
            fields={EPISODE_REWARD: [e.reward for e in episodes]},
            stats=stats,
        )

    def _transcript(self, episode: EpisodeTokens) -> str:
        """The episode's text with the environment's spans marked (special tokens shown)."""
        parts, start = [], 0
        for end in range(1, len(episode.ids) + 1):
            if end == len(episode.ids) or episode.sampled[end] != episode.sampled[start]:
                span = episode.ids[start:end]
                if episode.sampled[start]:
                    parts.append(self.tokenizer.decode(span, skip_special_tokens=True))
                else:
                    parts.append(ENVIRONMENT_SPAN.format(self.tokenizer.decode(span)))
                start = end
        return "".join(parts)
