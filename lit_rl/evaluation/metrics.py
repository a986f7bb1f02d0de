"""pass@k (Chen et al., 2021) and the evaluation's torchmetrics."""

import torch
from torchmetrics import MeanMetric, Metric, MetricCollection

from lit_rl.evaluation.evaluate import EvaluationBatch


def pass_at_k(
    num_samples: torch.Tensor | int,  # [B] n, samples drawn per problem
    num_correct: torch.Tensor | int,  # [B] c, of which correct
    k: int,
) -> torch.Tensor:  # [B] float64
    """The unbiased estimator of pass@k (Chen et al., 2021, Eq. 1): the probability that at
    least one of k samples drawn without replacement from the n is correct,
    ``1 - C(n - c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (their
    numerically stable form). Needs ``k <= n``."""
    n = torch.as_tensor(num_samples, dtype=torch.float64)
    c = torch.as_tensor(num_correct, dtype=torch.float64)
    n, c = torch.broadcast_tensors(n, c)
    if (n < k).any():
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n.min():.0f}")
    if ((c < 0) | (c > n)).any():
        raise ValueError("pass@k needs 0 <= num_correct <= num_samples")
    # Factors i = n-c+1 .. n; a problem with n - c < k always has a correct sample among k.
    width = int(c.max()) if c.numel() else 0
    i = (n - c)[..., None] + 1 + torch.arange(width, dtype=torch.float64)
    factors = torch.where(i <= n[..., None], 1 - k / i, torch.ones_like(i))
    estimate = 1 - factors.prod(dim=-1)
    return torch.where(n - c < k, torch.ones_like(estimate), estimate)


class PassAtK(Metric):
    """Mean over problems of ``pass_at_k``; updated with each problem's correct samples."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor) -> None:  # [B, n] bool
        n = torch.full((correct.shape[0],), correct.shape[1])
        estimate = pass_at_k(n, correct.sum(dim=1).cpu(), self.k)
        self.total += estimate.sum().to(self.total.device)
        self.count += correct.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class EvaluationMetrics(MetricCollection):
    """``greedy_accuracy``, ``reward`` (greedy), ``completion_len`` (greedy) and, with
    ``num_samples`` n > 0 sampled completions per problem, ``pass@1``, ``pass@n`` and
    ``maj@n`` (the most frequent final answer among the n is correct)."""

    def __init__(self, num_samples: int) -> None:
        metrics: dict[str, Metric] = {
            "greedy_accuracy": MeanMetric(),
            "reward": MeanMetric(),
            "completion_len": MeanMetric(),
        }
        if num_samples > 0:
            metrics["pass@1"] = PassAtK(1)
            metrics[f"pass@{num_samples}"] = PassAtK(num_samples)
            metrics[f"maj@{num_samples}"] = MeanMetric()
        super().__init__(metrics, compute_groups=False)
        self.num_samples = num_samples

    def record(self, result: EvaluationBatch) -> None:
        """Add one batch of problems."""
        self["greedy_accuracy"].update(result.greedy_correct.float())
        self["reward"].update(result.greedy_reward)
        self["completion_len"].update(result.greedy_length.float())
        if self.num_samples > 0:
            self["pass@1"].update(result.sample_correct)
            self[f"pass@{self.num_samples}"].update(result.sample_correct)
            self[f"maj@{self.num_samples}"].update(result.majority_correct.float())
