"""The engine check: a stale engine is caught at the step it goes stale, by name; the
logprob mismatch metrics measure a known gap exactly."""

import copy
import math

import pytest
import torch
from lightning.pytorch import Callback

from lit_rl.algorithms import SamplerCorrection
from lit_rl.modules import GRPOModule
from lit_rl.rollout import (
    Generation,
    GenerationRequest,
    HFGenerateEngine,
    InProcessEngine,
    LogprobCheck,
    PackedEngine,
    SamplerMismatchError,
    SamplerMismatchWarning,
    StaleWeightsError,
    completion_mask_from_eos,
    policy_fingerprint,
)
from tests.conftest import fit_rollouts, tiny_module_args


class CopyingEngine(InProcessEngine):
    """Samples from its own copy of the policy, taken at each sync, like an engine that holds
    its own weights; ``skip_version``: the sync it silently skips (keeping the old copy);
    ``lie``: report the live policy's fingerprint as its own; ``shift``: added to every
    reported logprob."""

    name = "CopyingEngine"

    def __init__(self, skip_version: int | None = None, lie: bool = False, shift: float = 0.0):
        super().__init__()
        self.skip_version, self.lie, self.shift = skip_version, lie, shift
        self.inner = PackedEngine()
        self.live: torch.nn.Module | None = None

    def sync_weights(self, policy: torch.nn.Module, version: int) -> float:
        self.live = policy
        if version != self.skip_version:
            self.inner.sync_weights(copy.deepcopy(policy), version)
        self.weights_version = version
        return policy_fingerprint(policy)

    def generate(self, request: GenerationRequest) -> Generation:
        out = self.inner.generate(request)  # read from its packed copy of the copy
        held = policy_fingerprint(self.live) if self.lie else out.weights_fingerprint
        counted = completion_mask_from_eos(out.completion_ids, request.eos_token_ids)
        logprobs = out.logprobs + self.shift * counted
        return Generation(out.completion_ids, logprobs, self.weights_version, held)


def _fit(tiny_model_dir, engine, steps, check=None):
    torch.manual_seed(0)
    module = GRPOModule(**tiny_module_args(tiny_model_dir, learning_rate=5e-2))
    return fit_rollouts(module, tiny_model_dir, steps, engine=engine, logprob_check=check)


def test_an_engine_that_skips_a_sync_is_named_at_that_step(tiny_model_dir):
    with pytest.raises(
        StaleWeightsError, match="CopyingEngine sampled with weights of fingerprint .* version 1"
    ):
        _fit(tiny_model_dir, CopyingEngine(skip_version=1), steps=3)


def test_a_stale_engine_that_reports_the_new_fingerprint_fails_the_logprob_check(tiny_model_dir):
    check = LogprobCheck(warn_k3=1e-5, error_k3=1e-4)
    with pytest.raises(SamplerMismatchError, match="CopyingEngine, rollout of step 1: .* k3 = "):
        _fit(tiny_model_dir, CopyingEngine(skip_version=1, lie=True), steps=3, check=check)
    # The same run with an engine that syncs: the check passes every step.
    trainer = _fit(tiny_model_dir, CopyingEngine(), steps=3, check=check)
    assert trainer.callback_metrics["rollout/logprob_mismatch_k3"].item() < 1e-9


def test_a_known_logprob_shift_gives_the_expected_metrics(tiny_model_dir):
    shift = 0.1
    check = LogprobCheck(warn_k3=1e-3, error_k3=1.0, token_threshold=0.05)
    with pytest.warns(SamplerMismatchWarning, match="CopyingEngine, rollout of step 0"):
        trainer = _fit(tiny_model_dir, CopyingEngine(shift=shift), steps=1, check=check)
    logged = trainer.callback_metrics
    # log rho = log pi_trainer - log pi_engine = -shift on every token.
    expected_k3 = math.exp(-shift) - 1 + shift
    assert logged["rollout/logprob_mismatch_k3"].item() == pytest.approx(expected_k3, rel=1e-4)
    assert logged["rollout/logprob_mismatch_max_abs"].item() == pytest.approx(shift, rel=1e-4)
    assert logged["rollout/logprob_mismatch_frac_over"].item() == 1.0


def test_the_default_engine_logs_its_version_and_fingerprint_every_step(tiny_model_dir):
    fingerprints = []

    class Fingerprints(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            metrics = trainer.callback_metrics
            fingerprints.append(
                (
                    int(metrics["rollout/weights_version"]),
                    float(metrics["rollout/weights_fingerprint"]),
                    policy_fingerprint(pl_module.policy),
                )
            )

    torch.manual_seed(0)
    module = GRPOModule(**tiny_module_args(tiny_model_dir))
    fit_rollouts(module, tiny_model_dir, 3, callbacks=(Fingerprints(),))
    assert [version for version, _, _ in fingerprints] == [0, 1, 2]
    # Each rollout's fingerprint is the weights before that step's update: the previous
    # step's weights after it (logged as float32).
    for (_, sampled, _), (_, _, after) in zip(fingerprints[1:], fingerprints, strict=False):
        assert sampled == pytest.approx(after, rel=1e-6)
    assert len({sampled for _, sampled, _ in fingerprints}) == 3


def test_the_default_thresholds_follow_the_precision():
    check = LogprobCheck()
    assert check.thresholds(low_precision=False) == (1e-6, 1e-4)
    assert check.thresholds(low_precision=True) == (1e-2, 1e-1)
    assert LogprobCheck(error_k3=0.5).thresholds(low_precision=True) == (1e-2, 0.5)


def test_in_float32_the_default_check_stops_a_one_step_stale_engine(tiny_model_dir):
    with pytest.raises(SamplerMismatchError, match="past error_k3 = 0.0001"):
        _fit(tiny_model_dir, CopyingEngine(skip_version=1, lie=True), steps=3)


def test_token_tis_scales_the_policy_gradient_by_the_truncated_ratio(tiny_model_dir):
    # The engine reports logprobs 0.1 above the trainer's: rho = exp(-0.1) on every token, so
    # with beta = 0 the whole gradient (its norm before clipping) scales by exactly rho.
    norms = {}
    for correction in ("none", "token_tis"):
        torch.manual_seed(0)
        module = GRPOModule(
            **tiny_module_args(
                tiny_model_dir, beta=0.0, sampler_correction=SamplerCorrection(correction)
            )
        )
        check = LogprobCheck(enabled=False)
        trainer = fit_rollouts(
            module, tiny_model_dir, 1, engine=CopyingEngine(shift=0.1), logprob_check=check
        )
        norms[correction] = trainer.callback_metrics["train/grad_norm"].item()
    assert norms["token_tis"] == pytest.approx(math.exp(-0.1) * norms["none"], rel=1e-5)


def test_an_unknown_correction_is_named(tiny_model_dir):
    with pytest.raises(ValueError, match="sampler_correction mode must be one of"):
        SamplerCorrection("tis")
    with pytest.raises(ValueError, match="needs 0 <= low < 1 < high, got low=0.5, high=1.0"):
        SamplerCorrection("token_mask", high=1.0)


class SkippingPackedEngine(PackedEngine):
    """The shipped PackedEngine, but its sync at version 1 does not reach it."""

    def sync_weights(self, policy, version):
        if version == 1:
            return policy_fingerprint(policy)  # says nothing, changes nothing
        return super().sync_weights(policy, version)


class StaleHFGenerateEngine(HFGenerateEngine):
    """The shipped HFGenerateEngine, but from version 1 on it samples a copy of version 0's
    weights while reporting the new version."""

    def sync_weights(self, policy, version):
        expected = super().sync_weights(policy, version)
        if version == 0:
            self.frozen = copy.deepcopy(policy)
        self.policy = self.frozen
        return expected


def test_a_skipped_or_stale_sync_of_each_in_process_engine_stops_the_run_by_name(tiny_model_dir):
    with pytest.raises(StaleWeightsError, match="PackedEngine was synced to weights version 1"):
        _fit(tiny_model_dir, SkippingPackedEngine(), steps=3)
    with pytest.raises(
        StaleWeightsError, match="HFGenerateEngine sampled with weights of fingerprint"
    ):
        _fit(tiny_model_dir, StaleHFGenerateEngine(), steps=3)


def test_a_packed_copy_that_differs_from_the_policy_stops_the_run_by_name(
    tiny_model_dir, monkeypatch
):
    # The fingerprint is read from the decoder PackedEngine samples with: a packing that gets
    # one adapter entry wrong (here, from version 1 on) is caught, not only a missed sync.
    from lit_rl.rollout import decoder, packed_engine

    class Corrupted(decoder.PackedDecoder):
        def __init__(self, model, rows=None):
            super().__init__(model, rows)
            if float(self.layers[0].qkv.lora_b.abs().sum()) > 0:  # B = 0 until a step
                self.layers[0].qkv.lora_b[0, 0] += 1e-3

    monkeypatch.setattr(packed_engine, "PackedDecoder", Corrupted)
    with pytest.raises(StaleWeightsError, match="PackedEngine sampled with weights of fingerprint"):
        _fit(tiny_model_dir, PackedEngine(), steps=3)


def test_engines_read_the_fingerprint_of_their_own_layout(tiny_model_dir):
    # Fused q/k/v, scalings folded into B: the packed copy's fingerprint is the policy's to
    # float32 rounding, for adapters and for full weights; a step's change is far larger.
    from peft import LoraConfig

    from lit_rl.models import apply_lora, load_model
    from lit_rl.rollout.decoder import PackedDecoder

    model = load_model(str(tiny_model_dir))
    lora = apply_lora(
        load_model(str(tiny_model_dir)),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "up_proj"],
            init_lora_weights=False,
        ),
    )
    for network in (model, lora):
        expected, held = policy_fingerprint(network), PackedDecoder(network).fingerprint()
        assert held == pytest.approx(expected, rel=1e-12) and expected > 0
        with torch.no_grad():
            next(p for p in network.parameters() if p.requires_grad and p.ndim == 2).mul_(1.0001)
        assert PackedDecoder(network).fingerprint() != pytest.approx(expected, rel=1e-6)
