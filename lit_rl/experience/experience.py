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

    input_ids: torch.Tensor  # [N, P+T] prompt tokens then completion tokens
    attention_mask: torch.Tensor  # [N, P+T] 1 = real token (prompt padding is 0)
    completion_mask: torch.Tensor  # [N, T] bool, True up to and including the first EOS
    rewards: torch.Tensor  # [N] outcome reward (the reward's total)
    token_rewards: torch.Tensor  # [N, T] reward per token: outcome on the last, minus KL if asked
    advantages: torch.Tensor  # [N, T] 0 on padding
    returns: torch.Tensor | None = None  # [N, T] value targets (estimators with a critic)
    # [N, T] pi_old, the trainer's logprobs under the sampling weights: from the rollout when the
    # update takes several optimizer steps; on-policy (one step) training_step fills it from the
    # first forward pass, which then scores the same weights.
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
    weights_version: int = -1  # the optimizer step whose weights sampled the rows
    weights_fingerprint: float = float("nan")  # of those weights (lit_rl.rollout)

    def __len__(self) -> int:
        return self.completion_mask.shape[0]

    @property
    def num_completion_tokens(self) -> int:
        return self.completion_mask.shape[1]

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
