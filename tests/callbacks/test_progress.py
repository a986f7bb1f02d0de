"""StepProgressBar through lit-rl: it replaces Lightning's bar (not a recipe's own), counts
optimizer steps without epochs or v_num, and the run ends with its summary."""

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from lit_rl.callbacks import StepProgressBar
from lit_rl.cli import run_cli
from tests.test_cli import TINY


def _fit(tiny_model_dir, tmp_path, *extra: str):
    shown = [a for a in TINY if a != "--trainer.enable_progress_bar=false"]
    return run_cli(
        [
            "fit", "--config", "recipes/grpo_math_local.yaml",
            f"--model.init_args.model={tiny_model_dir}",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=2",
            "--trainer.val_check_interval=2", *shown, *extra,
        ]
    )  # fmt: skip


def test_steps_replace_epochs_and_the_run_ends_with_its_summary(tiny_model_dir, tmp_path, capsys):
    cli = _fit(tiny_model_dir, tmp_path)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, (RichProgressBar, TQDMProgressBar))]
    assert not bars and cli.trainer.progress_bar_callback.__class__ is StepProgressBar
    err = capsys.readouterr().err
    assert "step: 100%" in err and "2/2" in err and "s/step=" in err and "reward=" in err
    assert "Epoch" not in err and "v_num" not in err
    summary = err[err.index("lit_rl: 2 optimizer steps in") :]
    accuracy = float(cli.trainer.callback_metrics["val/greedy_accuracy"])
    assert f"held-out greedy accuracy: {100 * accuracy:.1f} % (step 2)" in summary
    run = tmp_path / "grpo_math_local" / "version_0" / "checkpoints"
    assert f"policy: {run / 'policy'} (for transformers; its LoRA adapter in adapter/)" in summary
    assert f"checkpoint: {run / 'last.ckpt'}" in summary


def test_a_recipes_own_progress_bar_is_kept(tiny_model_dir, tmp_path):
    cli = _fit(
        tiny_model_dir, tmp_path, "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"
    )
    assert type(cli.trainer.progress_bar_callback) is TQDMProgressBar
    assert not any(isinstance(c, StepProgressBar) for c in cli.trainer.callbacks)
