"""LogprobCheck: after every sync, does the engine sample the policy the trainer scores?"""

import torch
from lightning.pytorch.utilities import rank_zero_warn


class SamplerMismatchError(RuntimeError):
    """The engine's logprobs of its own samples are too far from the trainer's."""


class SamplerMismatchWarning(UserWarning):
    """The engine's logprobs are further from the trainer's than numerical noise explains."""


# (warn_k3, error_k3) where thresholds are not given, by the precision the policy computes in.
# Measured on the default recipe (embedded model, LoRA, PackedEngine; docs/rollout.md): the
# engine-trainer k3 is ~1e-11 in float32 and 1.2-2.7e-3 in bf16; an engine serving the
# weights of one step before reads 4e-4 in float32 and is lost in bf16 noise (2.9e-3), where
# the weights fingerprint names it instead.
FLOAT32_THRESHOLDS = (1e-6, 1e-4)
BF16_THRESHOLDS = (1e-2, 1e-1)


class LogprobCheck:
    """Thresholds on ``rollout/logprob_mismatch_k3``, the mean per-token k3 estimate of
    KL(engine || trainer) over the sampled tokens (``lit_rl.algorithms.sampler_mismatch``).

    Past ``warn_k3`` a warning names the engine, the step and the size (again only when the
    gap has doubled since); past ``error_k3`` training stops with that message. Unset, both
    follow the precision the policy computes in: float32 (1e-6, 1e-4), where a one-step-stale
    engine is an error; bf16 or float16 (1e-2, 1e-1), 4-40x the rounding noise measured.

    Args:
        warn_k3: warn above this k3 (``None``: by precision).
        error_k3: stop above this k3 (``None``: by precision); ``inf`` never stops.
        token_threshold: ``|log pi_trainer - log pi_engine|`` above which a token counts in
            ``rollout/logprob_mismatch_frac_over``.
        enabled: ``False`` logs the metrics but never warns or stops.
    """

    def __init__(
        self,
        warn_k3: float | None = None,
        error_k3: float | None = None,
        token_threshold: float = 0.5,
        enabled: bool = True,
    ) -> None:
        if warn_k3 is not None and error_k3 is not None and not 0 <= warn_k3 <= error_k3:
            raise ValueError(
                f"LogprobCheck needs 0 <= warn_k3 <= error_k3, got {warn_k3}, {error_k3}"
            )
        self.warn_k3 = warn_k3
        self.error_k3 = error_k3
        self.token_threshold = token_threshold
        self.enabled = enabled
        self.last_warned_k3 = 0.0

    def thresholds(self, low_precision: bool) -> tuple[float, float]:
        """(warn_k3, error_k3) for a policy computing in bf16/fp16 or in float32."""
        warn, error = BF16_THRESHOLDS if low_precision else FLOAT32_THRESHOLDS
        return (
            warn if self.warn_k3 is None else self.warn_k3,
            error if self.error_k3 is None else self.error_k3,
        )

    def verify(
        self,
        k3: torch.Tensor | float,
        max_abs: float,
        engine: str,
        step: int,
        low_precision: bool,
    ) -> None:
        """Warn or stop on the mismatch of the rollout sampled at optimizer step ``step``."""
        k3 = float(k3)
        warn_k3, error_k3 = self.thresholds(low_precision)
        if not self.enabled or k3 <= warn_k3:
            return
        message = (
            f"{engine}, rollout of step {step}: its logprobs of its own samples differ from "
            f"the trainer's by k3 = {k3:.3g} (largest token gap {max_abs:.3g} nats)"
        )
        if k3 > error_k3 or k3 != k3:
            raise SamplerMismatchError(
                f"{message}, past error_k3 = {error_k3:g}: the engine samples another "
                "policy than the one trained (a missed weight sync, other weights or sampling "
                "settings). Fix the engine, or raise RolloutCallback's "
                "logprob_check.error_k3 if this gap is expected (e.g. an fp8 engine)"
            )
        if k3 < 2 * self.last_warned_k3:
            return
        self.last_warned_k3 = k3
        rank_zero_warn(
            f"{message}, past warn_k3 = {warn_k3:g} (rounding noise: ~1e-11 in float32, ~2e-3 in bf16); "
            "a sampler_correction (token_tis, token_mask, ...) corrects for the gap",
            category=SamplerMismatchWarning,
        )
