"""The typed seams of the experience layer without a Trainer: the handoff of one batch's
Experience to the update and its result back, the protocol check callbacks make, the
settings an algorithm asks the pipeline for, and the estimators' own refusals."""

from types import SimpleNamespace

import pytest
import torch

from lit_rl.experience import (
    GAE,
    ExperienceHandoff,
    ExperienceModule,
    GroupNormalized,
    Overlong,
    PolicyOwner,
    ProcessSupervised,
    ReinforcePlusPlus,
    UpdateResult,
    check_estimator,
    missing_members,
)
from tests.conftest import build_tokenizer, make_rollout


def _update() -> UpdateResult:
    return UpdateResult(metrics={"loss": 0.5}, optimizer_steps=1, old_logprobs=torch.zeros(2, 3))


def test_the_handoff_carries_one_experience_to_the_step_and_its_update_back():
    handoff = ExperienceHandoff()
    experience = make_rollout(build_tokenizer(), ["ab", "cd"], completion_length=3)
    handoff.put(experience)
    assert handoff.trained is None
    assert handoff.take() is experience
    with pytest.raises(RuntimeError, match="found no Experience"):
        handoff.take()  # taken once
    update = _update()
    handoff.report(experience, update)
    assert handoff.trained.experience is experience and handoff.trained.update is update
    handoff.put(None)  # a batch without an update (dynamic sampling still filling)
    assert handoff.trained is None and handoff.take() is None


def test_a_step_without_a_put_names_the_callback_to_add():
    with pytest.raises(RuntimeError, match="add lit_rl.callbacks.RolloutCallback"):
        ExperienceHandoff().take()


def test_the_protocol_check_names_what_a_module_lacks():
    members = dict(
        tokenizer=None,
        model_recipe=None,
        models=None,
        reward=None,
        handoff=None,
        sampler=None,
        global_step=0,
        experience_spec=lambda: None,
        logprobs_and_values=lambda sequences: None,
    )
    assert missing_members(SimpleNamespace(**members), ExperienceModule) == []
    partial = {k: v for k, v in members.items() if k not in ("handoff", "logprobs_and_values")}
    assert missing_members(SimpleNamespace(**partial), ExperienceModule) == [
        "handoff",
        "logprobs_and_values",
    ]
    assert missing_members(SimpleNamespace(**partial), PolicyOwner) == []
    assert missing_members(object(), PolicyOwner) == ["tokenizer", "model_recipe", "models"]


def test_overlong_settings_are_checked():
    assert Overlong() == Overlong(0, 1.0, False)
    with pytest.raises(ValueError, match="buffer_length and penalty_factor must be >= 0"):
        Overlong(buffer_length=-1)


@pytest.mark.parametrize(
    ("estimator", "num_generations", "kl_coef", "message"),
    [
        (GroupNormalized(), 0, 0.0, "num_generations must be >= 1, got 0"),
        (GroupNormalized(), 1, 0.0, "must be >= 2 to form groups for GroupNormalized"),
        (ReinforcePlusPlus(baseline="group_mean"), 1, 0.1, "to form groups for ReinforcePlusPlus"),
        (ProcessSupervised(), 4, 0.1, "ProcessSupervised does not read: put the KL in the loss"),
    ],
)
def test_estimators_refuse_settings_they_cannot_use(estimator, num_generations, kl_coef, message):
    with pytest.raises(ValueError, match=message):
        check_estimator(estimator, num_generations, kl_coef)


def test_estimators_accept_what_they_can_use():
    check_estimator(GAE(), 1, 0.05)  # the critic is the baseline: one completion per prompt
    check_estimator(ReinforcePlusPlus(), 1, 0.1)
    check_estimator(ProcessSupervised(), 4, 0.0)


def test_callbacks_refuse_a_module_without_the_contract_by_name():
    from lightning.pytorch import LightningModule

    from lit_rl.experience import require_members

    with pytest.raises(
        TypeError,
        match="ReferenceSyncCallback needs a module that implements "
        "lit_rl.experience.PolicyOwner .* LightningModule lacks tokenizer, "
        "model_recipe, models: use another",
    ):
        require_members(LightningModule(), PolicyOwner, "ReferenceSyncCallback", ": use another")
