"""End to end through ``lit-rl`` (LightningCLI) on the tiny local model: recipes parse, GRPO
trains and logs the documented metrics, artifacts load in plain transformers, and a user's
own data file and reward class plug in from YAML."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_rl.cli import run_cli

ALL_RECIPES = sorted(Path(__file__).parents[1].joinpath("recipes").glob("*.yaml"))


def needs_extra(recipe: Path) -> bool:
    """A recipe of lit_rl.integrations (its ``# extra:`` line): tests/integrations runs it."""
    return any(line.startswith("# extra:") for line in recipe.read_text().splitlines())


RECIPES = [recipe for recipe in ALL_RECIPES if not needs_extra(recipe)]
TINY = [
    "--model.init_args.num_generations=4",
    "--model.init_args.max_completion_length=12",
    "--model.init_args.lora.target_modules=[q_proj,v_proj]",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_train=16",
    "--data.init_args.num_val=4",
    "--data.init_args.val_batch_size=4",
    "--trainer.enable_progress_bar=false",
]


def _scalars_and_text(log_dir: Path) -> tuple[set[str], set[str]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return set(events.Tags()["scalars"]), set(events.Tags()["tensors"])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_parses(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: lit_rl.modules.GRPOModule" in printed or (
        "class_path: lit_rl.modules.PPOModule" in printed
    )


def test_local_directory_recipe_trains_logs_and_exports(tiny_model_dir, tmp_path):
    run_cli(
        [
            "fit",
            "--config",
            "recipes/grpo_math_local.yaml",
            f"--model.init_args.model={tiny_model_dir}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.callbacks+=lit_rl.callbacks.SampleLoggerCallback",
            "--trainer.callbacks.every_n_steps=1",
            *TINY,
        ]
    )
    run = tmp_path / "grpo_math_local" / "version_0"
    scalars, text = _scalars_and_text(run)
    expected = {
        "train/loss",
        "train/kl",
        "train/clip_ratio",
        "train/entropy",
        "train/lr",
        "train/grad_norm",
        "rollout/reward",
        "rollout/reward/correctness",
        "rollout/reward/format",
        "rollout/reward_std",
        "rollout/zero_std_fraction",
        "rollout/completion_len",
        "rollout/logprob_mismatch_k3",
        "rollout/weights_fingerprint",
        "train/step_time",
        "val/reward",
        "val/greedy_accuracy",
        "val/pass@1",
        "val/pass@4",
        "val/maj@4",
    }
    assert expected <= scalars, expected - scalars
    assert "rollout/samples/text_summary" in text
    checkpoints = run / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert (checkpoints / "policy" / "adapter" / "adapter_config.json").is_file()
    policy = AutoModelForCausalLM.from_pretrained(checkpoints / "policy")
    tokenizer = AutoTokenizer.from_pretrained(checkpoints / "policy")
    batch = tokenizer(["1+1="], return_tensors="pt")
    assert (
        policy.generate(**batch, max_new_tokens=3, do_sample=False).shape[1]
        == batch.input_ids.shape[1] + 3
    )


def test_bring_your_own_data_and_reward_with_a_time_budget(tiny_model_dir, tmp_path):
    data = tmp_path / "tasks.jsonl"
    rows = [{"instruction": f"Say the letter {c}", "target": c} for c in "abcdefgh"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "mine.yaml"
    config.write_text(f"""
trainer:
  max_steps: 100000
  max_time: "00:00:00:01"  # stops after the first step that ends past it, on any machine
  logger: {{class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {{save_dir: {tmp_path}, name: mine}}}}
  callbacks:
    - class_path: lit_rl.callbacks.RolloutCallback
    - class_path: lit_rl.callbacks.PolicyCheckpoint
      init_args: {{save_last: true}}
  enable_progress_bar: false
model:
  class_path: lit_rl.modules.GRPOModule
  init_args:
    model: {tiny_model_dir}
    dtype: float32          # the export is compared with the live policy to 1e-5
    lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}}
    reward:
      class_path: tests.byo_reward.ContainsTargetCharacter
      init_args: {{field: target}}
    num_generations: 4
    max_completion_length: 8
data:
  class_path: lit_rl.data.PromptDataModule
  init_args: {{train_data: {data}, prompt_field: instruction, batch_size: 2}}
""")
    cli = run_cli(["fit", "--config", str(config)])
    assert cli.trainer.global_step >= 1 and cli.trainer.global_step < 100000  # stopped by max_time
    run = tmp_path / "mine" / "version_0"
    scalars, _ = _scalars_and_text(run)
    assert {"rollout/reward/contains_target", "rollout/reward/brevity"} <= scalars
    # The run stopped on time, between checkpoint intervals: last.ckpt still holds its final step.
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == cli.trainer.global_step
    assert last["callbacks"]["RolloutCallback"]["num_rollouts"] == cli.trainer.global_step
    policy = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "policy")
    assert not any("lora" in name for name, _ in policy.named_parameters())
    tokenizer = cli.model.tokenizer
    batch = tokenizer(["Say the letter c"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            policy(**batch).logits, cli.model.policy(**batch).logits, rtol=0, atol=1e-5
        )


def test_unknown_model_path_fails_before_training(tmp_path):
    # jsonargparse re-raises instantiation errors as ValueError, keeping our message.
    with pytest.raises(
        (FileNotFoundError, ValueError), match="does not exist: pass an existing directory"
    ):
        run_cli(
            [
                "fit",
                "--config",
                "recipes/grpo_math_local.yaml",
                f"--model.init_args.model={tmp_path}/missing",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
            ]
        )


def test_make_train_with_an_unknown_recipe_lists_the_known_ones():
    root = Path(__file__).parents[1]
    result = subprocess.run(
        ["make", "-s", "train", "RECIPE=nope"], cwd=root, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "unknown recipe 'nope'" in result.stderr and "grpo_math" in result.stderr


def test_console_script_exits_zero_on_success(tiny_model_dir, tmp_path):
    # setuptools wraps the entry point as sys.exit(main()): a returned object would exit 1.
    argv = [
        "lit-rl",
        "validate",
        "--config",
        "recipes/grpo_math_local.yaml",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",  # where the run's config.yaml goes
        f"--model.init_args.model={tiny_model_dir}",
        "--model.init_args.max_completion_length=4",
        "--data.init_args.num_val=2",
        "--trainer.enable_progress_bar=false",
    ]
    code = f"import sys; from lit_rl.cli import main; sys.argv = {argv!r}; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "config.yaml").is_file()


def test_a_reward_module_in_the_working_folder_imports_under_the_console_script(tmp_path):
    # The quickstart's my_rewards.py beside the user's recipe: `lit-rl` itself (not python -m,
    # which would put the folder on the path) must find it by class_path.
    (tmp_path / "my_rewards.py").write_text(
        "from lit_rl.rewards import RewardOutput\n"
        "import torch\n\n"
        "class Longer:\n"
        "    def __call__(self, prompts, completions, batch):\n"
        "        total = torch.tensor([float(len(c)) for c in completions])\n"
        "        return RewardOutput(total, {'length': total})\n"
    )
    recipe = Path(__file__).parents[1] / "recipes" / "grpo_math.yaml"
    command = [
        str(Path(sys.executable).with_name("lit-rl")), "fit", "--config", str(recipe),
        "--model.init_args.reward=my_rewards.Longer", "--print_config",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: my_rewards.Longer" in result.stdout


def test_ppo_recipe_trains_and_logs_the_documented_metrics(tiny_model_dir, tmp_path):
    run_cli(
        [
            "fit",
            "--config",
            "recipes/ppo_math.yaml",
            f"--model.init_args.model={tiny_model_dir}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_steps=8",  # 2 rollout batches of 2 epochs x 2 minibatches
            "--trainer.val_check_interval=2",
            *TINY,
        ]
    )
    run = tmp_path / "ppo_math" / "version_0"
    scalars, _ = _scalars_and_text(run)
    expected = {
        "train/loss",
        "train/policy_loss",
        "train/value_loss",
        "train/vf_explained_var",
        "train/approx_kl",
        "train/clip_ratio",
        "train/value_clip_ratio",
        "train/entropy",
        "train/grad_norm",
        "rollout/reward",
        "rollout/return",
        "rollout/kl",
        "rollout/kl_coef",
        "rollout/values",
        "rollout/reward/correctness",
        "val/reward",
    }
    assert expected <= scalars, expected - scalars
    checkpoints = run / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 8 and last["kl_coef"] == 0.05
    assert any(".lora_A.value." in k for k in last["state_dict"])
    # The exported policy is the policy adapter merged into the base: no critic inside.
    policy = AutoModelForCausalLM.from_pretrained(checkpoints / "policy")
    assert not any("lora" in name or "value" in name for name, _ in policy.named_parameters())


# Recipes of the algorithm variants, each with its paper and equation in docs/algorithms/.
VARIANTS = [
    "grpo_math_process",
    "grpo_math_dr_grpo",
    "grpo_math_dapo",
    "grpo_math_gspo",
    "grpo_math_cispo",
    "grpo_math_sapo",
    "rloo_math",
    "reinforce_pp_math",
]


# What the tiny settings (12 new tokens) need changed beside them.
VARIANT_ARGS = {"grpo_math_dapo": ["--model.init_args.overlong.buffer_length=4"]}


@pytest.mark.parametrize("recipe", VARIANTS)
def test_every_variant_recipe_trains_two_steps(recipe, tiny_model_dir, tmp_path):
    run_cli(
        [
            "fit",
            "--config",
            f"recipes/{recipe}.yaml",
            f"--model.init_args.model={tiny_model_dir}",
            f"--data.init_args.tokenizer={tiny_model_dir}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            *TINY,
            *VARIANT_ARGS.get(recipe, []),
        ]
    )
    scalars, _ = _scalars_and_text(tmp_path / recipe / "version_0")
    assert {"train/loss", "rollout/reward", "val/greedy_accuracy"} <= scalars
    assert (tmp_path / recipe / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("module", ["GRPOModule", "PPOModule"])
def test_every_module_argument_has_help_text(module, capsys):
    # jsonargparse turns the Args: section of the docstrings into --help; an argument whose
    # help is only "(type: ..., default: ...)" lost its documentation.
    with pytest.raises(SystemExit):
        run_cli(["fit", "--model.help", f"lit_rl.modules.{module}"])
    lines = capsys.readouterr().out.splitlines()
    undocumented = [
        line.split()[0]
        for line, following in zip(lines, lines[1:], strict=False)
        if line.strip().startswith("--model.")
        and ".help" not in line
        and len(line.split()) <= 2  # the option and its metavar, no description after them
        and following.strip().startswith("(type:")
    ]
    assert not undocumented, undocumented


def test_validate_prints_the_evaluation_table_for_a_checkpoint_and_an_export(
    tiny_model_dir, tmp_path, caplog
):
    common = [
        "--config",
        "recipes/grpo_math_local.yaml",
        f"--model.init_args.model={tiny_model_dir}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *TINY,
    ]
    run_cli(["fit", *common, "--trainer.max_steps=2"])
    checkpoints = tmp_path / "grpo_math_local" / "version_0" / "checkpoints"
    with caplog.at_level("INFO"):
        from_checkpoint = run_cli(["validate", *common, f"--ckpt_path={checkpoints / 'last.ckpt'}"])
        exported = run_cli(
            [
                "validate",
                *common,
                f"--model.init_args.model={checkpoints / 'policy'}",
                "--model.init_args.lora=null",
            ]
        )
    tables = [r.getMessage() for r in caplog.records if "lit_rl evaluation (" in r.getMessage()]
    assert len(tables) == 2 and "pass@4" in tables[0] and "maj@4" in tables[1]
    # The checkpoint's steps (validate restores no loop), and none for a model directory.
    assert "(2 optimizer steps)" in tables[0] and "(0 optimizer steps)" in tables[1]
    # The exported directory (merged weights) scores as the checkpoint (adapters) does.
    ours, theirs = (cli.trainer.callback_metrics for cli in (from_checkpoint, exported))
    assert ours["val/greedy_accuracy"] == theirs["val/greedy_accuracy"]
    assert ours["val/completion_len"] == pytest.approx(theirs["val/completion_len"].item())
