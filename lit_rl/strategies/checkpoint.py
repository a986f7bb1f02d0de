"""Optimizer state keyed by parameter name, so a checkpoint loads at any world size."""

from typing import Any

from torch import nn

OptimizerState = dict[str, Any]  # torch.optim.Optimizer.state_dict(): "state", "param_groups"


def optimizer_state_by_name(state: OptimizerState, names: list[str]) -> OptimizerState:
    """``state`` with the optimizer's parameter positions replaced by ``names[position]``.

    ``Optimizer.state_dict()`` numbers parameters by position. Lightning rekeys such a state
    for FSDP2 by enumerating every module parameter, frozen ones included, which misplaces
    the state of a LoRA optimizer; by name it loads under any strategy (torch distributed
    checkpoint's own optimizer states are keyed by name too). States keyed by name already
    pass unchanged.
    """
    if not _keyed_by_position(state):
        return state
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def optimizer_state_by_position(state: OptimizerState, names: list[str]) -> OptimizerState:
    """The inverse of ``optimizer_state_by_name`` for an optimizer over ``names`` in order,
    as ``Optimizer.load_state_dict`` takes it."""
    if _keyed_by_position(state):
        return state
    position = {name: i for i, name in enumerate(names)}
    saved = [name for group in state["param_groups"] for name in group["params"]]
    if sorted(saved) != sorted(names):
        missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
        raise ValueError(
            "the checkpoint's optimizer trains other parameters than this model: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
            f"{extra[:3]}{'...' if len(extra) > 3 else ''}; resume with the settings it was "
            "written with (model, lora, algorithm)"
        )
    return {
        "state": {position[name]: value for name, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [position[name] for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def _keyed_by_position(state: OptimizerState) -> bool:
    return all(isinstance(p, int) for group in state["param_groups"] for p in group["params"])


def parameter_names(module: nn.Module, parameter_groups: list[dict[str, Any]]) -> list[str]:
    """The names in ``module`` of the parameters of an optimizer over ``parameter_groups``, in
    the optimizer's order."""
    names = {id(p): name for name, p in module.named_parameters()}
    return [names[id(p)] for group in parameter_groups for p in group["params"]]


def name_optimizer_states(checkpoint: dict[str, Any], names: list[str]) -> None:
    """Key a Lightning checkpoint's optimizer states by parameter name (``names``, in the
    optimizer's order), in place: it then resumes at another number of processes."""
    states = checkpoint.get("optimizer_states", [])
    checkpoint["optimizer_states"] = [optimizer_state_by_name(s, names) for s in states]


def number_optimizer_states(checkpoint: dict[str, Any], names: list[str]) -> None:
    """The inverse of ``name_optimizer_states``, in place, for ``Optimizer.load_state_dict``:
    one process (or DDP) loads by position; FSDP2 loads its optimizer states itself."""
    states = checkpoint.get("optimizer_states", [])
    checkpoint["optimizer_states"] = [optimizer_state_by_position(s, names) for s in states]
