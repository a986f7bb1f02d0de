"""Rollouts sampled ahead of the update (``RolloutCallback(max_staleness=S)``): what is trained
on is at most S versions behind, a worker's exception reaches the trainer, and a resumed run
neither loses nor repeats a prompt. The engine: PackedEngine sampling ahead, from the copy of
the policy it takes at each sync (its own weights, as a server's are), with random delays in
its generation. Against real vLLM servers: tests/rollout/test_vllm_server_real.py."""

import random
import time

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_rl.callbacks import RolloutCallback
from lit_rl.modules import GRPOModule
from lit_rl.rollout import (
    Generation,
    GenerationRequest,
    HFGenerateEngine,
    PackedEngine,
    SamplingParams,
    policy_fingerprint,
)
from lit_rl.rollout.engine import InProcessEngine
from tests.conftest import fit_rollouts, tiny_module_args


class DelayedEngine(PackedEngine):
    """PackedEngine with ``delays`` seconds before some generations, or a failure."""

    def __init__(self, delays: tuple[float, ...] = (), fail_at: int | None = None) -> None:
        super().__init__()
        self.delays, self.fail_at, self.calls = delays, fail_at, 0

    def generate(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the sampler broke at its generation number 2")
        if self.delays:
            time.sleep(random.Random(self.calls).choice(self.delays))
        return super().generate(request)


class NoCopies(InProcessEngine):
    """An in-process engine without ``sample_ahead`` (as VLLMEngine, which sleeps through the
    update to share the accelerator): rollouts ahead refuse it."""

    name = "NoCopies"
    sample_ahead = None  # type: ignore[assignment]


class Trained(Callback):
    """Per optimizer step: the version trained at, the version sampled with, the prompts."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.prompts: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trained = pl_module.handoff.trained
        if trained is None:
            return
        experience = trained.experience
        self.steps.append((trainer.global_step - 1, experience.weights_version))
        self.prompts += experience.prompts[:: experience.group_size]


def _fit(model_dir, engine, steps, staleness=1, callbacks=(), ckpt_path=None, **module_args):
    torch.manual_seed(0)
    module = GRPOModule(**tiny_module_args(model_dir, **module_args))
    trained = Trained()
    trainer = fit_rollouts(
        module,
        model_dir,
        steps,
        [trained, *callbacks],
        engine=engine,
        rollout=RolloutCallback(max_staleness=staleness),
        ckpt_path=ckpt_path,
        num_train=16,
    )
    return trainer, trained


def test_what_is_trained_on_was_sampled_one_update_before_and_never_older(tiny_model_dir):
    engine = DelayedEngine(delays=(0.0, 0.05, 0.3))
    trainer, trained = _fit(tiny_model_dir, engine, steps=4)
    assert trainer.global_step == 4
    # Update k (at version k) trains on rollouts sampled at version k - 1 (the first on those
    # sampled at version 0, while no update had run: the first batch only submits).
    assert trained.steps == [(0, 0), (1, 0), (2, 1), (3, 2)]
    assert max(now - then for now, then in trained.steps) <= 1
    assert engine.copies and engine.policy is engine.own_copy


def test_rollouts_that_would_be_too_stale_stop_the_run_with_the_fix(tiny_model_dir):
    # Two optimizer steps per rollout: the next rollouts are 2 versions behind, past S = 1.
    with pytest.raises(RuntimeError, match="2 behind, past max_staleness=1.*at least that"):
        _fit(tiny_model_dir, DelayedEngine(), steps=4, num_mini_batches=2)


def test_an_exception_of_the_worker_reaches_the_trainer(tiny_model_dir):
    with pytest.raises(RuntimeError, match="the sampler broke at its generation number 2"):
        _fit(tiny_model_dir, DelayedEngine(fail_at=2), steps=3)


def test_an_engine_that_cannot_sample_ahead_is_refused_with_the_engines_that_can(tiny_model_dir):
    with pytest.raises(ValueError, match="NoCopies cannot .* use PackedEngine, HFGenerateEngine"):
        _fit(tiny_model_dir, NoCopies(), steps=1)


@pytest.mark.parametrize("engine_class", [PackedEngine, HFGenerateEngine])
def test_sampling_ahead_samples_the_synced_weights_while_the_policy_changes(
    tiny_model_dir, engine_class
):
    module = GRPOModule(**tiny_module_args(tiny_model_dir))
    module.configure_model()
    policy = module.models.policy
    prompts = torch.randint(1, 100, (2, 5))
    request = GenerationRequest(prompts, torch.ones_like(prompts), 2, SamplingParams(8), 0, (2,))

    def sampled(engine: InProcessEngine) -> Generation:
        torch.manual_seed(0)
        return engine.generate(request)

    plain, ahead = engine_class(), engine_class()
    ahead.sample_ahead()
    synced = ahead.sync_weights(policy, 0)
    assert synced == plain.sync_weights(policy, 0) == policy_fingerprint(policy)
    before = sampled(plain)
    with torch.no_grad():  # an update, after the sync and before the generation
        for parameter in policy.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    after = sampled(ahead)
    assert torch.equal(after.completion_ids, before.completion_ids)
    torch.testing.assert_close(after.logprobs, before.logprobs, rtol=0, atol=0)
    # Fingerprints as the engine reads them (the packed decoder's sums differ in the last bits).
    assert after.weights_fingerprint == pytest.approx(synced, rel=1e-9)
    assert synced != pytest.approx(policy_fingerprint(policy), rel=1e-6)
    changed = sampled(plain).weights_fingerprint  # the plain engine samples the policy as it is
    assert changed == pytest.approx(policy_fingerprint(policy), rel=1e-9)
    own_copy = ahead.own_copy
    ahead.sync_weights(policy, 1)  # the next sync copies in place, into the same copy
    assert ahead.own_copy is own_copy
    assert sampled(ahead).weights_fingerprint == pytest.approx(changed, rel=1e-9)


def test_a_resumed_run_neither_loses_nor_repeats_a_prompt(tiny_model_dir, tmp_path):
    _, whole = _fit(tiny_model_dir, DelayedEngine(), steps=5)
    save = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    _, first = _fit(tiny_model_dir, DelayedEngine(), steps=3, callbacks=[save])
    # The checkpoint of step 3 holds the batch in flight: the resumed run samples it again.
    _, rest = _fit(
        tiny_model_dir, DelayedEngine(), steps=5, callbacks=[save], ckpt_path=tmp_path / "last.ckpt"
    )
    assert len(whole.prompts) == 5 * 2  # 5 steps of 2 prompts
    assert first.prompts + rest.prompts == whole.prompts
    assert rest.steps[0] == (3, 3)  # sampled again with the resumed weights


def test_a_checkpoint_with_prompts_in_flight_is_not_resumed_synchronously(tiny_model_dir, tmp_path):
    save = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    _fit(tiny_model_dir, DelayedEngine(), steps=2, callbacks=[save])
    with pytest.raises(ValueError, match="resume it with max_staleness >= 1"):
        _fit(
            tiny_model_dir, DelayedEngine(), steps=3, staleness=0, ckpt_path=tmp_path / "last.ckpt"
        )
