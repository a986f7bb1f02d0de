"""LogprobCheck: after every sync, does the engine sample the policy the trainer scores?"""

import torch
from lightning.pytorch.utilities import rank_zero_warn


class SamplerMismatchError(RuntimeError):
    """The engine's logprobs of its own samples are too far from the trainer's."""


class SamplerMismatchWarning(UserWarning):
    """The engine's logprobs are further from the trainer's than numerical noise explains."""


class LogprobCheck:
    """Thresholds on ``rollout/logprob_mismatch_k3``, the mean per-token k3 estimate of
    KL(engine || trainer) over the sampled tokens (``lit_rl.algorithms.sampler_mismatch``).

    Measured on the embedded model (docs/algorithms/rollout-correction.md): float32 engine and
    trainer agree to ~1e-9, bf16 ones to ~1e-4; an engine one LoRA step behind at the default
    learning rate sits past 1e-2. Past ``warn_k3`` a warning names the engine, the step and
    the size (again only when the gap has doubled since); past ``error_k3`` training stops
    with that message.

    Args:
        warn_k3: warn above this k3.
        error_k3: stop above this k3; ``inf`` never stops.
        token_threshold: ``|log pi_trainer - log pi_engine|`` above which a token counts in
            ``rollout/logprob_mismatch_frac_over``.
        enabled: ``False`` logs the metrics but never warns or stops.
    """

    def __init__(
        self,
        warn_k3: float = 1e-3,
        error_k3: float = 5e-2,
        token_threshold: float = 0.5,
        enabled: bool = True,
    ) -> None:
        if not 0 <= warn_k3 <= error_k3:
            raise ValueError(
                f"LogprobCheck needs 0 <= warn_k3 <= error_k3, got {warn_k3}, {error_k3}"
            )
        self.warn_k3 = warn_k3
        self.error_k3 = error_k3
        self.token_threshold = token_threshold
        self.enabled = enabled
        self.last_warned_k3 = 0.0

    def verify(self, k3: torch.Tensor | float, max_abs: float, engine: str, step: int) -> None:
        """Warn or stop on the mismatch of the rollout sampled at optimizer step ``step``."""
        k3 = float(k3)
        if not self.enabled or k3 <= self.warn_k3:
            return
        message = (
            f"{engine}, rollout of step {step}: its logprobs of its own samples differ from "
            f"the trainer's by k3 = {k3:.3g} (largest token gap {max_abs:.3g} nats)"
        )
        if k3 > self.error_k3 or k3 != k3:
            raise SamplerMismatchError(
                f"{message}, past error_k3 = {self.error_k3:g}: the engine samples another "
                "policy than the one trained (a missed weight sync, other weights or sampling "
                "settings). Fix the engine, or raise RolloutCallback's "
                "logprob_check.error_k3 if this gap is expected (e.g. an fp8 engine)"
            )
        if k3 < 2 * self.last_warned_k3:
            return
        self.last_warned_k3 = k3
        rank_zero_warn(
            f"{message}, past warn_k3 = {self.warn_k3:g} (numerical noise is ~1e-4 in bf16); "
            "a sampler_correction (token_tis, token_mask, ...) corrects for the gap",
            category=SamplerMismatchWarning,
        )
