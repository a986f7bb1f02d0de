"""The integrations' recipes as a user runs them (``lit-rl fit --config recipes/...``), on the
tiny model for 2 steps: they parse, train, and log what they are for (turn metrics, the
environment's rewards, truncated episodes)."""

import pytest

from lit_rl.cli import run_cli
from tests.test_cli import ALL_RECIPES, _scalars_and_text, needs_extra

pytestmark = pytest.mark.integrations

INTEGRATION_RECIPES = [recipe for recipe in ALL_RECIPES if needs_extra(recipe)]
TINY = [
    "--model.init_args.num_generations=4",
    "--model.init_args.lora.target_modules=[q_proj,v_proj]",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_val=4",
    "--data.init_args.val_batch_size=4",
    "--trainer.enable_progress_bar=false",
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=2",
]
# What each recipe must log beyond the common metrics.
LOGGED = {
    "grpo_reasoning_gym": {"rollout/reward/reasoning_gym", "val/reward"},
    "grpo_textarena": {
        "rollout/episode/turns",
        "rollout/episode/invalid_moves",
        "rollout/truncated_fraction",
        "rollout/reward/environment",
    },
    "grpo_verifiers": {
        "rollout/episode/turns",
        "rollout/reward/environment",
        "val/reward",
    },
    "grpo_skyrl_gym": {
        "rollout/episode/turns",
        "rollout/reward/environment",
        "rollout/truncated_fraction",
    },
}


def test_every_integration_recipe_is_tested():
    assert {recipe.stem for recipe in INTEGRATION_RECIPES} == set(LOGGED)


@pytest.mark.parametrize("recipe", INTEGRATION_RECIPES, ids=lambda p: p.stem)
def test_the_recipe_trains_two_steps_and_logs_what_it_is_for(recipe, tiny_model_dir, tmp_path):
    run_cli(
        [
            "fit",
            "--config",
            str(recipe),
            f"--model.init_args.model={tiny_model_dir}",
            f"--data.init_args.tokenizer={tiny_model_dir}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            *TINY,
        ]  # fmt: skip
    )
    scalars, _ = _scalars_and_text(tmp_path / recipe.stem / "version_0")
    assert {"train/loss", "rollout/reward", "rollout/completion_len"} | LOGGED[
        recipe.stem
    ] <= scalars
