"""The KL coefficient of PPO's reward: fixed, or adapted towards a target KL."""

from dataclasses import dataclass


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019), §2.2: after each batch of ``n`` samples whose KL to the reference
    was ``KL``, ``coef <- coef * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)``.

    ``target=None`` keeps ``coef`` fixed. ``KL`` is a per-sequence KL (summed over tokens),
    as in the paper. The state is ``coef``: save it with the checkpoint.
    """

    coef: float
    target: float | None = None
    horizon: int = 10_000

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.coef}")
        if self.target is not None and self.target <= 0:
            raise ValueError(
                f"kl_target must be > 0 (or null for a fixed kl_coef), got {self.target}"
            )
        if self.horizon < 1:
            raise ValueError(f"kl_horizon must be >= 1, got {self.horizon}")

    def update(self, kl: float, num_samples: int) -> float:
        """Move ``coef`` after a batch; returns the new value."""
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + error * num_samples / self.horizon
        return self.coef
