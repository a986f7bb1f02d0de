"""Experience: every per-rollout tensor one policy update trains on, each with its shape."""

from dataclasses import dataclass, field, fields

import torch

from lit_rl.models import Sequences


@dataclass
class Experience:
    """A batch of scored rollouts with everything the update needs, sliceable by rows.

    N = prompts x G rollouts, prompt-major (rows k*G .. k*G+G-1 share prompt k) as built;
    P = padded prompt length (left padding), T = padded completion length, S = steps per
    completion (process supervision, padded). Minibatches (``select``, ``minibatches``,
    ``split``) keep every field row-aligned; rows may then come from different groups, which is
    fine once advantages are computed.
    """

    input_ids: torch.Tensor  # [N, P+T] prompt tokens then completion (or episode) tokens
    attention_mask: torch.Tensor  # [N, P+T] 1 = real token (prompt padding is 0)
    # [N, T] bool, True on the tokens the policy sampled: a completion's up to and including its
    # first EOS; a multi-turn episode's turns, with the environment's tokens as gaps
    completion_mask: torch.Tensor
    rewards: torch.Tensor  # [N] outcome reward (the reward's total)
    token_rewards: torch.Tensor  # [N, T] reward per token: outcome on the last, minus KL if asked
    advantages: torch.Tensor  # [N, T] 0 on padding
    returns: torch.Tensor | None = None  # [N, T] value targets (estimators with a critic)
    # [N, T] pi_old, the trainer's logprobs under the sampling weights, from the rollout when the
    # update takes several optimizer steps; None on-policy (one step), where the update's first
    # forward pass scores the same weights (its UpdateResult.old_logprobs).
    old_logprobs: torch.Tensor | None = None
    sampler_logprobs: torch.Tensor | None = None  # [N, T] the engine's (make_experience: always)
    ref_logprobs: torch.Tensor | None = None  # [N, T] pi_ref; None without a reference
    values: torch.Tensor | None = None  # [N, T] V(s_t) before token t, at rollout time
    kl: torch.Tensor | None = None  # [N, T] KL(pi_old || pi_ref) per token, when in the reward
    step_rewards: torch.Tensor | None = None  # [N, S] process rewards
    step_ends: torch.Tensor | None = None  # [N, S] long, completion-token index, -1 = padding
    reward_components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N]
    prompts: list[str] = field(default_factory=list)  # N prompt texts (for logging)
    completions: list[str] = field(default_factory=list)  # N completion texts
    # [N] bool, rows the loss leaves out (truncated completions, mask_truncated_completions)
    loss_excluded: torch.Tensor | None = None
    truncated: torch.Tensor | None = None  # [N] bool, out of budget (make_experience sets it)
    episode_stats: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N], episodes
    group_size: int = 1  # G: rows k*G .. k*G+G-1 are prompt k's group, as built
    weights_version: int = -1  # the optimizer step whose weights sampled the rows
    weights_fingerprint: float = float("nan")  # of those weights (lit_rl.rollout)

    def __len__(self) -> int:
        return self.completion_mask.shape[0]

    @property
    def num_completion_tokens(self) -> int:
        return self.completion_mask.shape[1]

    @property
    def num_groups(self) -> int:
        return len(self) // self.group_size

    def select_groups(self, groups: torch.Tensor) -> "Experience":
        """The rows of the groups ``groups`` ([k] long), in that order (as built: prompt-major)."""
        offsets = torch.arange(self.group_size)
        return self.select((groups[:, None].cpu() * self.group_size + offsets).reshape(-1))

    @property
    def loss_mask(self) -> torch.Tensor:  # [N, T] bool
        """The tokens the loss counts: the completion's, minus rows it leaves out."""
        if self.loss_excluded is None:
            return self.completion_mask
        return self.completion_mask & ~self.loss_excluded[:, None]

    @property
    def sequences(self) -> Sequences:
        return Sequences(self.input_ids, self.attention_mask, self.num_completion_tokens)

    def select(self, rows: torch.Tensor) -> "Experience":
        """The rows ``rows`` ([n] long) of every field, in that order."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value[rows.to(value.device)]
            elif isinstance(value, dict):
                value = {key: v[rows.to(v.device)] for key, v in value.items()}
            elif isinstance(value, list):
                value = [value[i] for i in rows.tolist()] if value else []
            picked[f.name] = value
        return Experience(**picked)

    def split(self, num_chunks: int) -> list["Experience"]:
        """``num_chunks`` consecutive row blocks (micro-batches), sizes differing by at most 1."""
        return self.minibatches(num_chunks, generator=None)

    def minibatches(
        self, num_minibatches: int, generator: torch.Generator | None
    ) -> list["Experience"]:
        """Rows shuffled with ``generator`` (kept in order when ``None``), cut into
        ``num_minibatches`` parts."""
        if not 1 <= num_minibatches <= len(self):
            raise ValueError(
                f"cannot cut {len(self)} rollouts into {num_minibatches} minibatches: "
                f"use between 1 and {len(self)}"
            )
        order = (
            torch.randperm(len(self), generator=generator)
            if generator is not None
            else torch.arange(len(self))
        )
        return [self.select(rows) for rows in torch.tensor_split(order, num_minibatches)]


def _pad_to(tensor: torch.Tensor, length: int, value: float | int, left: bool) -> torch.Tensor:
    """``tensor`` [n, L, ...] padded on dim 1 to ``length`` with ``value``."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = torch.full(
        (tensor.shape[0], missing, *tensor.shape[2:]), value, dtype=tensor.dtype,
        device=tensor.device,
    )  # fmt: skip
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


# How each [N, T] field pads to a longer completion, and each [N, S] field to more steps.
_TOKEN_PAD: dict[str, float | int | bool] = {
    "completion_mask": False,
    "token_rewards": 0.0,
    "advantages": 0.0,
    "returns": 0.0,
    "old_logprobs": 0.0,
    "sampler_logprobs": 0.0,
    "ref_logprobs": 0.0,
    "values": 0.0,
    "kl": 0.0,
}
_STEP_PAD: dict[str, float | int] = {"step_rewards": 0.0, "step_ends": -1}


def concatenate(experiences: list[Experience], pad_token_id: int) -> Experience:
    """The rows of ``experiences`` in order, as one Experience: prompts re-padded on the left
    to the longest prompt, completions on the right to the longest completion, steps to the
    most steps (padding counts nowhere: masks False, step ends -1). The parts must come from
    the same weights (their ``weights_version``) and carry the same fields."""
    if not experiences:
        raise ValueError("concatenate needs at least one Experience")
    versions = {e.weights_version for e in experiences}
    if len(versions) > 1:
        raise ValueError(f"cannot join Experiences sampled by different weights: {versions}")
    prompt_length = max(e.input_ids.shape[1] - e.num_completion_tokens for e in experiences)
    completion_length = max(e.num_completion_tokens for e in experiences)
    num_steps = max(
        (e.step_rewards.shape[1] for e in experiences if e.step_rewards is not None), default=0
    )

    def sequence(e: Experience, tensor: torch.Tensor, value: int) -> torch.Tensor:
        t = e.num_completion_tokens
        prompt = _pad_to(tensor[:, :-t], prompt_length, value, left=True)
        return torch.cat([prompt, _pad_to(tensor[:, -t:], completion_length, value, False)], 1)

    joined: dict[str, object] = {}
    first = experiences[0]
    for f in fields(Experience):
        values = [getattr(e, f.name) for e in experiences]
        if f.name == "input_ids":
            joined[f.name] = torch.cat(
                [sequence(e, e.input_ids, pad_token_id) for e in experiences]
            )
        elif f.name == "attention_mask":
            joined[f.name] = torch.cat([sequence(e, e.attention_mask, 0) for e in experiences])
        elif all(v is None for v in values):
            joined[f.name] = None
        elif any(v is None for v in values):
            raise ValueError(f"cannot join Experiences where only some have '{f.name}'")
        elif f.name in _TOKEN_PAD:
            pad = _TOKEN_PAD[f.name]
            joined[f.name] = torch.cat([_pad_to(v, completion_length, pad, False) for v in values])
        elif f.name in _STEP_PAD:
            pad = _STEP_PAD[f.name]
            joined[f.name] = torch.cat([_pad_to(v, num_steps, pad, False) for v in values])
        elif isinstance(values[0], torch.Tensor):  # [N]
            joined[f.name] = torch.cat(values)
        elif isinstance(values[0], dict):
            # Per-row counts and rewards by name: a part without one (an episode metric no
            # episode of that draw reported) has 0 there.
            names = list(dict.fromkeys(key for v in values for key in v))
            joined[f.name] = {
                key: torch.cat(
                    [
                        v.get(key, torch.zeros(len(e)))
                        for e, v in zip(experiences, values, strict=True)
                    ]
                )
                for key in names
            }
        elif isinstance(values[0], list):
            joined[f.name] = [item for v in values for item in v]
        else:  # weights_version, weights_fingerprint: equal in every part
            joined[f.name] = getattr(first, f.name)
    return Experience(**joined)
