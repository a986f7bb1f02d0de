"""Optimizer state keyed by parameter name in a checkpoint, and back by position, so a
checkpoint resumes at another number of processes; models built for the run's strategy."""

import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_rl.models import ModelRecipe, PolicyModels
from lit_rl.strategies import (
    build_policy_models,
    name_optimizer_states,
    number_optimizer_states,
    parameter_names,
)


def _model_and_optimizer():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[0].bias.requires_grad_(False)  # a frozen parameter the optimizer does not hold
    groups = [
        {"params": [model[1].weight, model[0].weight]},
        {"params": [model[1].bias], "lr": 1.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    model(torch.ones(4, 2)).sum().backward()
    optimizer.step()
    return model, groups, optimizer


def test_optimizer_states_round_trip_by_name():
    model, groups, optimizer = _model_and_optimizer()
    names = parameter_names(model, groups)
    assert names == ["1.weight", "0.weight", "1.bias"]  # the optimizer's order, not the module's
    original = optimizer.state_dict()
    checkpoint = {"optimizer_states": [optimizer.state_dict()]}
    name_optimizer_states(checkpoint, names)
    state = checkpoint["optimizer_states"][0]
    assert set(state["state"]) == set(names)
    assert state["param_groups"][1]["params"] == ["1.bias"]
    torch.testing.assert_close(
        state["state"]["0.weight"]["exp_avg"], original["state"][1]["exp_avg"]
    )
    number_optimizer_states(checkpoint, names)
    fresh_model, fresh_groups, fresh = _model_and_optimizer()
    fresh.load_state_dict(checkpoint["optimizer_states"][0])
    for key, value in original["state"].items():
        torch.testing.assert_close(fresh.state_dict()["state"][key]["exp_avg"], value["exp_avg"])


def test_a_checkpoint_of_other_parameters_is_refused_by_name():
    model, groups, optimizer = _model_and_optimizer()
    checkpoint = {"optimizer_states": [optimizer.state_dict()]}
    name_optimizer_states(checkpoint, parameter_names(model, groups))
    with pytest.raises(ValueError, match=r"missing \['2.weight'\], unexpected \['1.bias'\]"):
        number_optimizer_states(checkpoint, ["1.weight", "0.weight", "2.weight"])


def test_models_are_built_for_the_strategy(tiny_model_dir, caplog):
    with caplog.at_level("INFO"):
        models = build_policy_models(ModelRecipe(str(tiny_model_dir), dtype="float32"), None)
    assert isinstance(models, PolicyModels) and models.reference is None
    assert "lit_rl: float32 weights (set explicitly)" in caplog.text
    with pytest.raises(ValueError, match="Set trainer.strategy to lit_rl.strategies.FSDP2Strategy"):
        build_policy_models(ModelRecipe(str(tiny_model_dir)), ModelParallelStrategy())
