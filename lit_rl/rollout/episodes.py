"""EpisodeSampler: rollouts as multi-turn episodes against an environment, token in, token out.

One episode per row (G per prompt, each with its own environment instance, all reset with the
prompt's group seed). The episodes run as tasks on one event loop for the whole rollout: a step
environment's loop (reset, then a turn and a step until done or out of budget) or a loop
environment's own ``run``. Whenever every live episode waits on the model, their conversations
so far go to the engine as one batch (``TurnBatcher``); each row keeps the ids the engine
sampled (mask 1) and the engine's logprobs of them; the environment's answers are rendered
alone and appended (mask 0, ``lit_rl.environments.ChatRenderer``). The result is
``EpisodeCompletions``: everything after the first prompt is the completion, so every
algorithm, estimator, loss and statistic runs on it unchanged and counts the sampled tokens
only.
"""

import asyncio
import inspect
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lit_rl.environments import (
    AsyncEnvironment,
    ChatRenderer,
    Environment,
    EpisodeResult,
    Episodes,
    EpisodeTruncated,
    LoopEnvironment,
    Message,
    ParsedCalls,
    Turn,
)
from lit_rl.rewards import EPISODE_REWARD, TURN_ENDS, TURN_REWARDS
from lit_rl.rollout.completions import Completions, CompletionSampler, WholeWeights
from lit_rl.rollout.conversation import Conversation, NextTurn
from lit_rl.rollout.engine import RolloutEngine
from lit_rl.rollout.request import SamplingParams
from lit_rl.rollout.turns import EpisodeTokens, TurnBatcher

ENVIRONMENT_SPAN = "⟦{}⟧"  # how sample panels mark the tokens the environment wrote
SEED = "seed"  # a row field that fixes its group's seed (lit_rl.data.EnvironmentRows)
TRUNCATED_REWARD = "truncated_reward"  # the statistic: what truncated episodes were scored
AnyEnvironment = Environment | AsyncEnvironment | LoopEnvironment


@dataclass(frozen=True)
class EpisodeCompletions(Completions):
    """``Completions`` whose rows are multi-turn episodes: ``texts`` are the last turns,
    ``transcripts`` the whole episodes (the environment's spans marked), ``stats`` per-row
    episode statistics ([N] each, logged as ``rollout/episode/<name>``); ``fields`` carry the
    environment's rewards (``episode_reward``, ``turn_rewards``, ``turn_ends``)."""

    transcripts: list[str] = field(default_factory=list)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> "EpisodeCompletions":
        moved = super().to(device)
        return replace(moved, stats={k: v.to(device) for k, v in self.stats.items()})


class EpisodeSampler(CompletionSampler):
    """A ``CompletionSampler`` whose rollouts are episodes (``Episodes``). Its
    ``EpisodeCompletions`` carry, per row: the environment's first message as the ``prompt``
    field (what rewards and sample panels read), the environment's rewards as fields (the sum
    ``episode_reward``, read by ``lit_rl.rewards.EpisodeReward``; each turn's reward and the
    completion token it lands on, read by ``lit_rl.rewards.TurnRewards``), the last turn's text
    for other rewards, and the statistics ``turns``, ``environment_tokens``,
    ``observations_cut`` and what the environment reports (``tool_calls``, ``tool_errors``).

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
    ) -> EpisodeCompletions:
        """``num_generations`` episodes of each of ``batch``'s rows (its list fields). The G
        episodes of a row share one seed: the row's ``seed`` field where it has one (a
        dataset of games), else one drawn from torch's RNG (the rollout's seeded stream):
        the same problem, sampled G ways."""
        names = [key for key, values in batch.items() if isinstance(values, list)]
        columns = zip(*(batch[name] for name in names), strict=True)
        prompts = [dict(zip(names, values, strict=True)) for values in columns]
        drawn = torch.randint(0, 2**62, (len(prompts),)).tolist()
        group_seeds = [int(row.get(SEED, seed)) for row, seed in zip(prompts, drawn, strict=True)]
        rows = [row for row in prompts for _ in range(num_generations)]
        seeds = [seed for seed in group_seeds for _ in range(num_generations)]
        environments = [self.episodes.environment() for _ in rows]
        episodes = [EpisodeTokens() for _ in rows]
        with self.awake(version):  # every turn on weights gathered and woken once
            weights = asyncio.run(self._play(environments, rows, seeds, episodes, version, greedy))
        return self._completions(episodes, *weights).to(batch["input_ids"].device)

    async def _play(
        self,
        environments: list[AnyEnvironment],
        rows: list[dict[str, Any]],
        seeds: list[int],
        episodes: list[EpisodeTokens],
        version: int,
        greedy: bool,
    ) -> tuple[int, float]:
        """Every episode to its end on this event loop, then every environment closed; the
        version and fingerprint of the weights that sampled them (one sync: every turn
        samples at ``version``)."""
        weights = [(version, float("nan"))]

        def sample_turns(waiting: list[EpisodeTokens]) -> list[Turn]:
            turns, weights[0] = self._sample_turns(waiting, version, greedy)
            return turns

        batcher = TurnBatcher(sample_turns)
        plays = [
            self._episode(environment, row, seed, episode, partial(batcher.turn, index))
            for index, (environment, row, seed, episode) in enumerate(
                zip(environments, rows, seeds, episodes, strict=True)
            )
        ]
        try:
            await batcher.serve(plays)
        finally:
            await asyncio.gather(*(_resolved(environment.close()) for environment in environments))
        return weights[0]

    async def _episode(
        self,
        environment: AnyEnvironment,
        row: dict[str, Any],
        seed: int,
        episode: EpisodeTokens,
        next_turn: NextTurn,
    ) -> None:
        if isinstance(environment, LoopEnvironment):
            await self._loop_episode(environment, row, seed, episode, next_turn)
        else:
            await self._step_episode(environment, row, seed, episode, next_turn)

    async def _step_episode(
        self,
        environment: Environment | AsyncEnvironment,
        row: dict[str, Any],
        seed: int,
        episode: EpisodeTokens,
        next_turn: NextTurn,
    ) -> None:
        """A step environment's episode: reset, then turn and step until the environment says
        done (or the episode is out of turns or tokens: then the environment scores it)."""
        first = await _resolved(environment.reset(row, seed))
        self._start(episode, self.renderer.prompt(first, environment.tool_schemas()), first)
        while True:
            turn = await next_turn(episode)
            result = await _resolved(environment.step(turn))
            episode.add_reward(result.reward, result.metrics)
            if result.done:
                episode.done = True
                return
            if not self._observe(episode, result.observation, turn.stopped):
                last = await _resolved(environment.truncate())
                episode.add_reward(last.reward, {**last.metrics, TRUNCATED_REWARD: last.reward})
                return

    async def _loop_episode(
        self,
        environment: LoopEnvironment,
        row: dict[str, Any],
        seed: int,
        episode: EpisodeTokens,
        next_turn: NextTurn,
    ) -> None:
        """A loop environment's episode: its ``run``, awaiting the model through a
        ``Conversation``; an episode whose budget ran out is truncated, scored by what ``run``
        returns (nothing when it let ``EpisodeTruncated`` through)."""
        conversation = Conversation(episode, self.renderer, self._start, self._observe, next_turn)
        try:
            result = await environment.run(row, seed, conversation)
        except EpisodeTruncated:
            if not conversation.truncated:
                raise  # not lit_rl's: the environment's own error
            result = EpisodeResult()
        if not isinstance(result, EpisodeResult):
            raise TypeError(
                f"{type(environment).__name__}.run returned {type(result).__name__}; a "
                "LoopEnvironment returns lit_rl.environments.EpisodeResult(reward, "
                "turn_rewards, metrics)"
            )
        turn_rewards = result.turn_rewards or [0.0] * episode.turns
        if len(turn_rewards) != episode.turns:
            raise ValueError(
                f"{type(environment).__name__}.run returned {len(turn_rewards)} turn_rewards "
                f"for an episode of {episode.turns} model turns: give one per model call"
            )
        for index, reward in enumerate(turn_rewards):
            episode.turn_rewards[index] += float(reward)
            episode.reward += float(reward)
        metrics = dict(result.metrics)
        if conversation.truncated:
            metrics[TRUNCATED_REWARD] = result.reward
        episode.add_reward(result.reward, metrics)
        episode.done = not conversation.truncated

    def _start(self, episode: EpisodeTokens, prompt: list[int], messages: list[Message]) -> None:
        """Begin ``episode`` with the environment's first ``messages``, rendered as ``prompt``,
        which with the episode's budget must fit the model's context."""
        context = getattr(self.policy.config, "max_position_embeddings", None)
        needed = len(prompt) + self.episodes.max_episode_tokens
        if context is not None and needed > context:
            raise ValueError(
                f"the environment's first messages are {len(prompt)} tokens with the chat "
                f"template; with episodes.max_episode_tokens={self.episodes.max_episode_tokens} "
                f"an episode needs {needed}, more than the model's context of {context} "
                "tokens: lower max_episode_tokens or shorten the environment's prompt"
            )
        episode.start(prompt, messages)

    def _sample_turns(
        self, waiting: list[EpisodeTokens], version: int, greedy: bool
    ) -> tuple[list[Turn], tuple[int, float]]:
        """One turn of each waiting episode, sampled as one batch and appended to it (at most
        ``max_completion_length`` tokens or what remains of its budget); the turns, and the
        version and fingerprint of the weights that sampled them."""
        budget, max_new = self.episodes.max_episode_tokens, self.sampling.max_new_tokens
        parse = self.episodes.tool_parser
        limits = [min(max_new, budget - len(episode.ids)) for episode in waiting]
        prompt_ids, prompt_mask = self._left_padded([e.prompt + e.ids for e in waiting])
        sampled = self.sample(prompt_ids, prompt_mask, 1, version, greedy, max(limits))
        turns = []
        for row, (episode, limit) in enumerate(zip(waiting, limits, strict=True)):
            length = min(int(sampled.mask[row].sum()), limit)
            ids = sampled.ids[row, :length].tolist()
            text = self.decode(ids)
            index = episode.turns
            episode.add_turn(ids, sampled.logprobs[row, :length].tolist(), text)
            calls = parse(text) if parse is not None else ParsedCalls()
            stopped = bool(ids) and ids[-1] in self.eos_token_ids
            turns.append(Turn(text, index, calls.calls, calls.errors, stopped))
        return turns, (sampled.weights_version, sampled.weights_fingerprint)

    def _observe(self, episode: EpisodeTokens, messages: list[Message], stopped: bool) -> bool:
        """Append the environment's ``messages`` after a turn (``stopped``: it ended with its
        EOS), within the budgets; whether the episode has room for another turn (else it is
        truncated: the turn cap, the budget spent by the turn, or an observation that reaches
        the budget, cut there)."""
        remaining = self.episodes.max_episode_tokens - len(episode.ids)
        if episode.turns >= self.episodes.max_turns or remaining == 0:
            return False
        observation = self.renderer.observation(self._cut(messages, episode), stopped)
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
            # Per-turn credit at a glance: what the last turn earned, and the turns before it.
            "last_turn_reward": torch.tensor([float(sum(e.turn_rewards[-1:])) for e in episodes]),
            "earlier_turns_reward": torch.tensor(
                [float(sum(e.turn_rewards[:-1])) for e in episodes]
            ),
            **{
                name: torch.tensor([e.metrics.get(name, 0.0) for e in episodes])
                for name in metric_names
            },
        }
        return EpisodeCompletions(
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
            fields={
                "prompt": [e.prompt_text for e in episodes],
                EPISODE_REWARD: [e.reward for e in episodes],
                TURN_REWARDS: [list(e.turn_rewards) for e in episodes],
                TURN_ENDS: [list(e.turn_ends) for e in episodes],
            },
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


async def _resolved(value: Any) -> Any:
    """``value``, awaited when a coroutine (an async environment's answer) gave it."""
    return await value if inspect.isawaitable(value) else value
