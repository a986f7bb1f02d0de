"""A run that was stopped and resumed through ``--ckpt_path last`` equals the run that was
never interrupted: every step's logged losses, rewards and KL, and the final weights, bit for
bit. Killed with SIGKILL after a step (GRPO and PPO, with and without LoRA, GRPO on
multi-turn episodes against an environment, across an epoch boundary, a reference sync before the kill and one after it, minibatch shuffling, experience
lost in flight), killed halfway through a checkpoint write, and stopped by SIGTERM/SIGINT.
Each run is the ``lit-rl`` CLI in its own process."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).parents[2]
BATCHES = 8  # training batches (rollouts) per run; 3 per epoch, so epochs end at 3 and 6
KILLED_AT = 4  # the kill comes in batch 5, after the checkpoint of batch 4 (mid-epoch 2)
STEPS_PER_BATCH = {"grpo": 2, "ppo": 4}  # optimizer steps: (ppo_epochs x) num_mini_batches
# One thread per run: two runs side by side share this machine's two cores without
# oversubscribing them (every run of a comparison computes with the same thread count).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def config(
    algorithm: str,
    lora: bool,
    model_dir: Path,
    out: Path,
    steps_per_batch: int,
    episodes: bool = False,
) -> dict:
    model = {
        "model": str(model_dir),
        "dtype": "float32",
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]} if lora else None,
        "reward": {
            "class_path": "tests.byo_reward.ContainsTargetCharacter",
            "init_args": {"field": "answer"},
        },
        "num_generations": 4,
        "max_completion_length": 8,
        "learning_rate": 1e-2,
        "num_mini_batches": 2,  # the shuffle generator's state matters
        "evaluation": {"num_samples": 2},  # pass@2 samples: seeded per evaluation
    }
    if episodes:  # multi-turn, against an environment that answers with a seed of its reset
        model["episodes"] = {
            "environment": {"class_path": "tests.environments.toy.Guess"},
            "max_turns": 3,
            "max_episode_tokens": 80,
        }
        model["reward"] = {"class_path": "lit_rl.rewards.EpisodeReward"}
    if algorithm == "ppo":
        model |= {"ppo_epochs": 2, "kl_coef": 0.05, "value_learning_rate": 1e-2}
        if not lora:  # the critic is a second model (with LoRA, an adapter on the policy)
            model["value_model"] = str(model_dir)
    else:
        model |= {"beta": 0.04}
    every = steps_per_batch
    return {
        "seed_everything": 0,
        "trainer": {
            "max_steps": BATCHES * every,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "val_check_interval": 3,  # evaluations after batches 3 and 6
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "callbacks": [
                {"class_path": "lit_rl.callbacks.RolloutCallback"},
                {
                    "class_path": "lit_rl.callbacks.ReferenceSyncCallback",
                    "init_args": {"ref_sync_steps": 3 * every, "ref_sync_mixup_alpha": 0.5},
                },
                {
                    "class_path": "tests.reliability.probes.StepRecorder",
                    "init_args": {"path": str(out / "steps.jsonl")},
                },
                {
                    "class_path": "lit_rl.callbacks.PolicyCheckpoint",
                    "init_args": {
                        "dirpath": str(out / "checkpoints"),
                        "every_n_train_steps": 2 * every,
                        "save_last": True,
                    },
                },
            ],
        },
        "model": {
            "class_path": f"lit_rl.modules.{'PPOModule' if algorithm == 'ppo' else 'GRPOModule'}",
            "init_args": model,
        },
        "data": {
            "class_path": "lit_rl.data.PromptDataModule",
            "init_args": {"batch_size": 2, "num_train": 6, "num_val": 2, "seed": 3},
        },
    }


def fit(config_file: Path, *args: str) -> subprocess.CompletedProcess:
    (result,) = fit_side_by_side((config_file, *args))
    return result


def fit_side_by_side(*runs: tuple[Path | str, ...]) -> list[subprocess.CompletedProcess]:
    """``lit-rl fit --config CONFIG ARGS...`` for each ``(CONFIG, *ARGS)``, all at once. Output
    goes to files beside each config, so no process waits on a full pipe."""
    started = []
    for config_file, *args in runs:
        folder = Path(config_file).parent
        command = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(config_file), *args]
        out, err = (folder / "fit.stdout").open("w+"), (folder / "fit.stderr").open("w+")
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=out, stderr=err, text=True)
        started.append((process, out, err))
    results = []
    for process, out, err in started:
        try:
            process.wait(timeout=600)
        except subprocess.TimeoutExpired:  # as subprocess.run does: no run outlives its test
            for other, _, _ in started:
                other.kill()
            raise
        with out, err:
            out.seek(0)
            err.seek(0)
            texts = out.read(), err.read()
        results.append(subprocess.CompletedProcess(process.args, process.returncode, *texts))
    return results


def records(out: Path) -> list[dict]:
    """Every training step's and evaluation's logged scalars, in order."""
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def steps(out: Path) -> list[dict]:
    return [row for row in records(out) if "step" in row]


def prepare(
    algorithm: str, lora: bool, model_dir: Path, root: Path, *names: str, episodes: bool = False
) -> dict:
    """A folder with the run's config for each of ``names``."""
    runs = {}
    for name in names:
        out = root / name
        out.mkdir()
        runs[name] = out
        every = STEPS_PER_BATCH[algorithm]
        run_config = config(algorithm, lora, model_dir, out, every, episodes)
        (out / "config.yaml").write_text(yaml.safe_dump(run_config))
    return runs


def assert_same_run(expected: Path, got: Path) -> None:
    """The same logged scalars at every step and evaluation, and the same final weights, bit
    for bit."""
    want_steps, have_steps = records(expected), records(got)
    assert [row["epoch"] for row in steps(expected)] == [0, 0, 0, 1, 1, 1, 2, 2]
    every = want_steps[0]["step"]  # optimizer steps per batch
    validations = [row["validation_at"] for row in want_steps if "validation_at" in row]
    assert validations == [3 * every, 6 * every]
    assert len(have_steps) == len(want_steps)
    for want, have in zip(want_steps, have_steps, strict=True):
        differ = {k: (want[k], have.get(k)) for k in want if want[k] != have.get(k)}
        assert not differ, (want.get("step", want.get("validation_at")), differ)
    assert any(row["train/loss"] != 0 for row in steps(expected))  # the runs did learn something
    want = torch.load(expected / "steps.weights.pt", weights_only=True)
    have = torch.load(got / "steps.weights.pt", weights_only=True)
    assert want.keys() == have.keys()
    for name, tensor in want.items():
        assert torch.equal(tensor, have[name]), name


def probe(name: str, **args: object) -> list[str]:
    """CLI arguments that append the probe callback ``name`` with ``args``."""
    return [
        f"--trainer.callbacks+=tests.reliability.probes.{name}",
        *(f"--trainer.callbacks.{key}={value}" for key, value in args.items()),
    ]


@pytest.fixture(scope="module")
def uninterrupted_grpo(tiny_model_dir, tmp_path_factory) -> Path:
    """The uninterrupted GRPO + LoRA run the stop and kill tests compare with."""
    out = prepare("grpo", True, tiny_model_dir, tmp_path_factory.mktemp("grpo"), "run")["run"]
    result = fit(out / "config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    ("algorithm", "lora", "episodes"),
    [
        ("grpo", True, False),
        ("grpo", False, False),
        ("ppo", True, False),
        ("ppo", False, False),
        ("grpo", True, True),
    ],
    ids=["grpo-lora", "grpo-full", "ppo-lora", "ppo-full", "grpo-lora-episodes"],
)
def test_sigkill_then_resume_equals_the_uninterrupted_run(
    algorithm, lora, episodes, tiny_model_dir, tmp_path
):
    names = ("uninterrupted", "killed")
    runs = prepare(algorithm, lora, tiny_model_dir, tmp_path, *names, episodes=episodes)
    first, killed = fit_side_by_side(
        (runs["uninterrupted"] / "config.yaml",),
        (
            runs["killed"] / "config.yaml",
            *probe("KillAfterStep", step=KILLED_AT * STEPS_PER_BATCH[algorithm]),
        ),
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(steps(runs["killed"])) == KILLED_AT  # batch 5's rollout was lost with it
    resumed = fit(runs["killed"] / "config.yaml", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(runs["uninterrupted"], runs["killed"])
    if episodes:  # the runs were multi-turn, and rewarded
        rows = steps(runs["uninterrupted"])
        assert max(row["rollout/episode/turns"] for row in rows) > 1
        assert any(row["rollout/reward"] > 0 for row in rows)


def test_sigkill_with_rollouts_ahead_neither_loses_nor_repeats_a_prompt(tiny_model_dir, tmp_path):
    # Rollouts sampled ahead (max_staleness 2: a GRPO rollout here is 2 optimizer steps) by the
    # default engine (PackedEngine, from its copy of the weights). The kill comes with a batch
    # in flight, whose prompts the checkpoint holds; the resumed run samples them again.
    runs = prepare("grpo", True, tiny_model_dir, tmp_path, "uninterrupted", "killed")
    for out in runs.values():
        run_config = yaml.safe_load((out / "config.yaml").read_text())
        rollout, *others = run_config["trainer"]["callbacks"]
        rollout["init_args"] = {"max_staleness": STEPS_PER_BATCH["grpo"]}
        recorder = {"class_path": "tests.reliability.probes.PromptRecorder"}
        recorder["init_args"] = {"path": str(out / "prompts.jsonl")}
        run_config["trainer"]["callbacks"] = [rollout, recorder, *others]
        (out / "config.yaml").write_text(yaml.safe_dump(run_config))
    first, killed = fit_side_by_side(
        (runs["uninterrupted"] / "config.yaml",),
        (runs["killed"] / "config.yaml", *probe("KillAfterStep", step=KILLED_AT * 2)),
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = fit(runs["killed"] / "config.yaml", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def trained(out: Path) -> list[tuple[int, list[str]]]:
        lines = (out / "prompts.jsonl").read_text().splitlines()
        return [(row["step"], row["prompts"]) for row in map(json.loads, lines)]

    whole, pieces = trained(runs["uninterrupted"]), trained(runs["killed"])
    assert [step for step, _ in whole] == [2 * (i + 1) for i in range(BATCHES)]
    # Killed after the checkpoint of step 8, with the next batch in flight and the one after
    # it drawn: the resumed run trains on each prompt once, in the uninterrupted run's order.
    assert pieces == whole


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_to_resume_from(
    uninterrupted_grpo, tiny_model_dir, tmp_path
):
    out = prepare("grpo", True, tiny_model_dir, tmp_path, "killed")["killed"]
    # Each interval writes two files (epoch=..-step=...ckpt, then last.ckpt): the 4th is
    # batch 4's last.ckpt, killed halfway.
    killed = fit(out / "config.yaml", *probe("KillDuringCheckpointWrite", nth=4))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = out / "checkpoints"
    partial = checkpoints / ".last.ckpt.partial"
    assert partial.is_file() and partial.stat().st_size > 0  # half a checkpoint on disk
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2 * STEPS_PER_BATCH["grpo"]  # batch 2's, whole

    resumed = fit(out / "config.yaml", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removed .last.ckpt.partial" in resumed.stderr
    assert not partial.exists()
    # Batch 3, its evaluation and batch 4 ran twice (before the kill and after the resume),
    # identically.
    rows = records(out)
    assert len(rows) == BATCHES + 2 + 3 and rows[2:5] == rows[5:8]
    (out / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5] + rows[8:]))
    assert_same_run(uninterrupted_grpo, out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_finishes_the_step_checkpoints_it_and_the_run_continues(
    signum, uninterrupted_grpo, tiny_model_dir, tmp_path
):
    out = prepare("grpo", True, tiny_model_dir, tmp_path, "stopped")["stopped"]
    every = STEPS_PER_BATCH["grpo"]
    # The signal arrives as batch 5 starts: between the interval checkpoints of batches 4
    # and 6 and before the evaluation after batch 6, so the checkpoint at batch 5 is the
    # stop's own.
    stopped = fit(
        out / "config.yaml", *probe("SignalAfterStep", step=4 * every, signum=int(signum))
    )
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    name = signal.Signals(signum).name
    assert f"lit-rl: received {name}: finishing the current step" in stopped.stderr
    last_path = out / "checkpoints" / "last.ckpt"
    assert (
        f"lit-rl: {name}: stopped after optimizer step {5 * every}; continue with the same "
        f"command and --ckpt_path last (or --ckpt_path {last_path})" in stopped.stderr
    )
    assert len(steps(out)) == 5  # the step it arrived in was finished
    last = torch.load(last_path, weights_only=False)
    assert last["global_step"] == 5 * every  # checkpointed at the step it was on
    assert not (out / "checkpoints" / "policy").exists()  # exported at the real end

    resumed = fit(out / "config.yaml", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(uninterrupted_grpo, out)


def test_the_same_command_with_ckpt_path_last_continues_the_recipes_versioned_run(
    uninterrupted_grpo, tiny_model_dir, tmp_path
):
    # The recipes log with a TensorBoardLogger that opens a new version_N per run, and the
    # checkpoints live under it: `--ckpt_path last` must continue the killed run's folder.
    out = prepare("grpo", True, tiny_model_dir, tmp_path, "killed")["killed"]
    run_config = yaml.safe_load((out / "config.yaml").read_text())
    run_config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(out / "runs"), "name": "grpo"},
    }
    del run_config["trainer"]["callbacks"][-1]["init_args"]["dirpath"]  # under the version
    (out / "config.yaml").write_text(yaml.safe_dump(run_config))
    every = STEPS_PER_BATCH["grpo"]
    killed = fit(out / "config.yaml", *probe("KillAfterStep", step=KILLED_AT * every))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = fit(out / "config.yaml", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "lit-rl: --ckpt_path last continues" in resumed.stderr
    assert sorted(p.name for p in (out / "runs" / "grpo").iterdir()) == ["version_0"]
    assert_same_run(uninterrupted_grpo, out)
