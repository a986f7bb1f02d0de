import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from peft import LoraConfig

from lit_rl.callbacks import RolloutCallback
from lit_rl.callbacks.seeding import EVALUATION, seed_rollout
from lit_rl.data import PromptDataModule
from lit_rl.modules import GRPOModule
from lit_rl.rewards import FunctionReward
from tests.conftest import rollout_trainer, tiny_module_args


def _fit_with_reward(tiny_model_dir, fn):
    module = GRPOModule(
        reward=FunctionReward(fn, name="user_reward"),
        model=str(tiny_model_dir),
        dtype="float32",
        lora=LoraConfig(r=2, target_modules=["q_proj"]),
        num_generations=2,
        max_completion_length=4,
    )
    data = PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=2, num_train=4, num_val=0)
    trainer = rollout_trainer()
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (
            lambda p, c, b: [1.0] * (len(c) - 1),
            "'user_reward' gave 'total' of shape \\(3,\\) for training batch 0",
        ),
        (
            lambda p, c, b: [math.nan] * len(c),
            "'user_reward' gave non-finite 'total' \\(nan\\) for completion 0 of training batch 0",
        ),
        (lambda p, c, b: torch.full((len(c),), math.inf), "non-finite 'total' \\(inf\\)"),
    ],
)
def test_bad_rewards_stop_training_with_the_reward_and_batch_named(tiny_model_dir, fn, message):
    with pytest.raises(ValueError, match=message):
        _fit_with_reward(tiny_model_dir, fn)


def test_rollouts_are_counted_and_a_base_seed_once_drawn_is_kept(tiny_model_dir):
    # The checkpoint round trip of both is tests/reliability/test_resume.py's bit-equal resume.
    trainer = _fit_with_reward(tiny_model_dir, lambda p, c, b: [float(len(x)) for x in c])
    callback = next(c for c in trainer.callbacks if isinstance(c, RolloutCallback))
    state = callback.state_dict()
    assert state["num_rollouts"] == 1  # max_steps 1: one batch, one rollout
    base_seed = state["base_seed"]
    assert isinstance(base_seed, int)
    # on_train_start runs again after a checkpoint restored the seed: it must not draw anew
    # (the global RNG has moved on since the first draw: a redraw in [0, 2**62) would differ).
    callback.on_train_start(trainer, trainer.lightning_module)
    assert callback.base_seed == base_seed


def _draws() -> tuple[torch.Tensor, float, float]:
    return torch.rand(3), float(np.random.rand()), random.random()


def test_a_rollouts_randomness_is_a_function_of_base_seed_rollout_and_rank():
    seed_rollout(11, 4, 0)
    expected = _draws()
    torch.manual_seed(123)  # whatever ran before (a restart, an evaluation, a reward)
    np.random.seed(5)
    random.seed(6)
    seed_rollout(11, 4, 0)
    again = _draws()
    assert torch.equal(again[0], expected[0])  # torch, numpy and Python alike
    assert again[1:] == expected[1:]
    for other in [(11, 5, 0), (11, 4, 1), (12, 4, 0), (11, 4, 0, EVALUATION)]:
        seed_rollout(*other)
        assert not torch.equal(_draws()[0], expected[0]), other


def test_evaluations_during_fit_sample_from_their_steps_seeds():
    callback = RolloutCallback()
    callback.base_seed = 11
    trainer = SimpleNamespace(global_step=6, global_rank=0, sanity_checking=False)
    callback.on_validation_start(trainer, None)
    expected = torch.rand(3)
    torch.manual_seed(99)  # a resumed run reaches step 6 with another RNG state
    callback.on_validation_start(trainer, None)
    assert torch.equal(torch.rand(3), expected)


def test_callback_refuses_a_module_without_the_rollout_protocol():
    with pytest.raises(
        TypeError,
        match="RolloutCallback needs a module that implements lit_rl.experience.ExperienceModule",
    ) as err:
        RolloutCallback().setup(Trainer(logger=False), LightningModule(), "fit")
    assert (
        "lacks tokenizer, model_recipe, models, reward, handoff, sampler, experience_spec, "
        "logprobs_and_values" in str(err.value)
    )


def test_policy_modules_have_every_protocol_member(tiny_model_dir):
    # The policy lives in nn.Module's _modules, where Python 3.12's static protocol lookup
    # (isinstance on a runtime_checkable Protocol) cannot see it: a GPU machine with 3.12
    # refused GRPOModule that way. The check must find every member.
    from lit_rl.experience import ExperienceModule, PolicyOwner, missing_members
    from lit_rl.modules import GRPOModule, PPOModule
    from tests.conftest import tiny_module_args

    for module_class in (GRPOModule, PPOModule):
        module = module_class(**tiny_module_args(tiny_model_dir))
        assert missing_members(module, ExperienceModule) == []
        assert missing_members(module, PolicyOwner) == []


def test_a_foreign_rollout_state_names_what_is_missing():
    with pytest.raises(
        KeyError, match="RolloutCallback cannot resume .* no num_rollouts, base_seed"
    ):
        RolloutCallback().load_state_dict({})


def test_a_stop_iteration_from_the_engine_fails_the_run_instead_of_ending_the_epoch(
    tiny_model_dir,
):
    # Lightning reads a StopIteration inside the loop as the end of the data: the epoch would
    # end at once and the next one start, for ever (max_epochs=2 ends it here if it regresses).
    from lit_rl.rollout import InProcessEngine

    class Exhausted(InProcessEngine):
        def generate(self, request):
            return next(iter([]))

    module = GRPOModule(**tiny_module_args(tiny_model_dir), engine=Exhausted())
    data = PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=2, num_train=4, num_val=0)
    trainer = Trainer(max_steps=1, max_epochs=2, logger=False, callbacks=[RolloutCallback()])
    with pytest.raises(RuntimeError, match="StopIteration escaped the rollout of training batch 0"):
        trainer.fit(module, data)
