"""``PolicyUpdate``: one Experience -> ``epochs x num_mini_batches`` optimizer steps."""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lit_rl.algorithms import Aggregation, aggregation_count, all_reduce_sum, micro_batch_weight
from lit_rl.experience import Experience, UpdateResult
from lit_rl.update.guard import GuardedOptimizerStep


@dataclass(frozen=True)
class UpdatePlan:
    """How one Experience becomes optimizer steps.

    Args:
        epochs: passes over the Experience (GRPO's mu, PPO's ppo_epochs).
        num_mini_batches: optimizer steps per pass: the rows are shuffled and cut into this
            many minibatches, whose sizes differ by at most one row.
        gradient_accumulation_steps: micro-batches per minibatch (to bound memory); the
            accumulated gradient is the minibatch's.
        aggregation: how the loss reduces over tokens, which sets each micro-batch's weight.
    """

    epochs: int
    num_mini_batches: int
    gradient_accumulation_steps: int
    aggregation: Aggregation

    def __post_init__(self) -> None:
        for name in ("epochs", "num_mini_batches", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def optimizer_steps(self) -> int:
        return self.epochs * self.num_mini_batches


@dataclass(frozen=True)
class MicroBatchLoss:
    """What the algorithm's loss on one micro-batch reports, after its backward pass."""

    # Scalars: losses ("loss", "*_loss") reduced as the loss aggregates; every other one a mean
    # over the micro-batch's counted tokens, so that they average over a minibatch accordingly.
    stats: dict[str, torch.Tensor]
    logprobs: torch.Tensor  # [n, T] the policy's logprobs of the micro-batch's tokens, detached


# backward(weight x the loss of a micro-batch): the algorithm's loss
Accumulate = Callable[[Experience, float], MicroBatchLoss]


class PolicyUpdate:
    """The update over one Experience, as ``plan`` says, with its own minibatch-shuffling RNG
    (so shuffling never shifts sampling) and the guarded optimizer step; both in checkpoints
    (``state_dict``).

    Args:
        plan: epochs, minibatches, micro-batches and the loss aggregation.
        guard: clips and steps, skipping NaN/inf gradients.
    """

    def __init__(self, plan: UpdatePlan, guard: GuardedOptimizerStep) -> None:
        self.plan = plan
        self.guard = guard
        self.shuffle = torch.Generator().manual_seed(0)

    def __call__(
        self,
        experience: Experience,
        accumulate: Accumulate,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> UpdateResult:
        """Train on ``experience``: for each epoch, for each minibatch (rows shuffled),
        ``accumulate`` every micro-batch's gradient with the weight that makes their sum the
        minibatch's gradient (``micro_batch_weight``, times this process's share of the
        global minibatch), then take a guarded optimizer step (``optimizer`` and the
        learning-rate ``scheduler`` step together).

        Each statistic is averaged over the optimizer steps; on several processes each
        process's value is weighted by its share, so that their mean is the global
        minibatch's. On-policy (no pi_old in the Experience, one optimizer step) the first
        forward pass scores the sampling weights: its logprobs are returned as pi_old.
        """
        plan = self.plan
        # One unshuffled minibatch is the whole batch; shuffling would only change float order.
        generator = self.shuffle if plan.num_mini_batches > 1 else None
        on_policy = experience.old_logprobs is None
        if on_policy and plan.optimizer_steps > 1:
            raise ValueError(
                f"{plan.optimizer_steps} optimizer steps on one Experience need pi_old from the "
                "rollout: the Experience has no old_logprobs"
            )
        aggregation = plan.aggregation
        trainer_logprobs: list[torch.Tensor] = []
        totals: dict[str, float] = defaultdict(float)
        if aggregation == "batch_token_mean":  # every process's counted tokens
            batch_tokens = max(1.0, float(all_reduce_sum(experience.loss_mask.sum())))
        for _ in range(plan.epochs):
            for minibatch in experience.minibatches(plan.num_mini_batches, generator):
                optimizer.zero_grad(set_to_none=True)
                loss_share, token_share = process_shares(minibatch.loss_mask, aggregation)
                if aggregation == "batch_token_mean":
                    # DAPO's token mean is over the whole batch: the minibatch's token mean
                    # times its share of the batch's tokens (x the number of minibatches, one
                    # optimizer step each) weighs every token the same in every step.
                    minibatch_tokens = float(all_reduce_sum(minibatch.loss_mask.sum()))
                    loss_share *= plan.num_mini_batches * minibatch_tokens / batch_tokens
                num_micro = min(plan.gradient_accumulation_steps, len(minibatch))
                for micro in minibatch.split(num_micro):
                    mask, full = micro.loss_mask, minibatch.loss_mask
                    weight = loss_share * micro_batch_weight(mask, full, aggregation)
                    token_weight = token_share * micro_batch_weight(mask, full, "token_mean")
                    output = accumulate(micro, weight)
                    if on_policy:
                        trainer_logprobs.append(output.logprobs)
                    for name, value in output.stats.items():
                        is_loss = name == "loss" or name.endswith("_loss")
                        totals[name] += (weight if is_loss else token_weight) * float(value)
                totals["grad_norm"] += float(self.guard(optimizer, scheduler))
        num_steps = plan.optimizer_steps
        # On-policy there is one unshuffled minibatch, cut in order: the rows in experience order.
        old_logprobs = torch.cat(trainer_logprobs) if on_policy else experience.old_logprobs
        return UpdateResult(
            metrics={name: total / num_steps for name, total in totals.items()},
            optimizer_steps=num_steps,
            old_logprobs=old_logprobs,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"shuffle": self.shuffle.get_state(), "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shuffle.set_state(state["shuffle"])
        self.guard.load_state_dict(state["guard"])


def process_shares(
    loss_mask: torch.Tensor,  # [n, T] bool, this process's rows of the minibatch
    aggregation: Aggregation,
) -> tuple[float, float]:
    """This process's share of the global minibatch (every process's together), times the
    number of processes: in the loss aggregation's unit (rows or tokens) and in counted tokens.

    DDP and FSDP average gradients over processes; weighting each process's loss by its share
    makes that average the gradient of the global minibatch's loss (a token mean over every
    process's tokens, not a mean of per-process token means). Statistics that are token means
    (KL, entropy, clip fractions) are weighted by the token share the same way. Both are 1.0
    on one process.
    """
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world_size == 1:
        return 1.0, 1.0
    counts = [aggregation_count(loss_mask, aggregation), int(loss_mask.sum())]
    local = torch.tensor(counts, dtype=torch.float64, device=loss_mask.device)
    total = all_reduce_sum(local.clone())
    shares = world_size * local / total.clamp(min=1)
    return float(shares[0]), float(shares[1])
