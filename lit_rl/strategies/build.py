"""The models of a run built for its strategy: the weights dtype FSDP2's mixed precision needs,
the choice logged with its reason, the shards placed."""

import dataclasses

from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_rl.models import ModelRecipe, PolicyModels, resolve_dtype
from lit_rl.strategies.fsdp2 import FSDP2Strategy


def build_policy_models(recipe: ModelRecipe, strategy: Strategy | None) -> PolicyModels:
    """``PolicyModels.build(recipe)``, sharded when ``strategy`` is ``FSDP2Strategy`` (call from
    ``configure_model``; ``strategy`` ``None`` = one process, nothing to shard)."""
    if isinstance(strategy, ModelParallelStrategy) and not isinstance(strategy, FSDP2Strategy):
        raise ValueError(
            "lit_rl shards its models with lit_rl.strategies.FSDP2Strategy (FSDP2 over all "
            "processes); a plain ModelParallelStrategy leaves the parallel plan to the "
            "module. Set trainer.strategy to lit_rl.strategies.FSDP2Strategy"
        )
    choice = resolve_dtype(recipe.dtype, trains_weights=recipe.lora is None)
    if choice.warning:
        rank_zero_warn(f"lit_rl: dtype {choice.name}: {choice.warning}")
    message = f"{choice.name} weights ({choice.reason})"
    if isinstance(strategy, FSDP2Strategy) and strategy.computes_in_bf16:
        recipe = dataclasses.replace(recipe, dtype=strategy.weights_dtype(recipe.dtype))
        message = f"{recipe.dtype} weights, bf16 compute (FSDP2 mixed precision)"
    rank_zero_info(f"lit_rl: {message}")
    models = PolicyModels.build(recipe)
    if isinstance(strategy, FSDP2Strategy):
        strategy.parallelize(models)
    return models
