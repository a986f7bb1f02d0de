"""The strategy layer on 2 CPU processes (gloo): FSDP2 and DDP train exactly what one process
trains on the same global batch, checkpoints resume at another world size, and the export
gathered from shards is the single-process export.

Each multi-process run is ``torch.distributed.run`` over ``tests/strategies/worker.py``; the
completions are fixed (``FixedEngine``), so sampling is out of the comparison. Tolerances:
float32 throughout. What counts tokens, rows or turns (lengths, clip fractions, turns) counts
the same on any number of processes; the mean over processes may round its quotient one float32
ulp apart (rel 1e-6), where one token more would move a fraction by ~1e-2. What sums real
numbers (gradients, losses, rewards, KL) is summed in another order over two processes than
over one, which moves weights by ~1e-6 after two steps (measured 3.7e-6 at most), hence 1e-5.
A checkpoint restores exactly at any number of processes: weights, optimizer, counters.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_rl.cli import main
from lit_rl.models import save_policy
from tests.strategies import worker

ROOT = Path(__file__).resolve().parents[2]
CASES = ("grpo_lora", "ppo_lora", "grpo_full", "ppo_episodes")
ATOL = 1e-5
# Metrics that count (tokens, rows, turns, steps): the same counts, to the quotient's rounding.
COUNTED_RTOL = 1e-6
COUNTED = {
    "rollout/completion_len",
    "rollout/truncated_fraction",
    "rollout/zero_std_fraction",
    "rollout/weights_version",
    "rollout/episode/turns",
    "rollout/episode/environment_tokens",
    "rollout/episode/misses",
    "rollout/reward/contains_target",
    "rollout/logprob_mismatch_frac_over",
    "train/clip_ratio",
    "train/value_clip_ratio",
    "train/nonfinite_steps",
    "train/lr",
}
# bf16 compute against float32, after one step: the cosine of the two weight updates, and
# their size ratio less 1 (measured on the three cases: cosine >= 0.996, ratio within 5e-4).
BF16_COSINE, BF16_SIZE = 0.99, 0.01


class Runs:
    """Runs of the worker by name, each made once per test module."""

    def __init__(self, directory: Path, model_dir: Path) -> None:
        self.directory = directory
        self.model_dir = model_dir

    def get(
        self,
        name: str,
        strategy: str,
        processes: int,
        steps: int,
        save: bool = False,
        resume: str | None = None,
    ) -> Path:
        out = self.directory / name
        if out.exists():
            return out
        args = [
            "--cases", ",".join(CASES), "--strategy", strategy, "--devices", str(processes),
            "--model-dir", str(self.model_dir), "--steps", str(steps), "--out-dir", str(out),
        ]  # fmt: skip
        if save:
            args.append("--save")
        if resume is not None:
            args += ["--resume-dir", str(self.directory / resume)]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc-per-node", str(processes)]
        command = (
            [sys.executable, "-m", "tests.strategies.worker"]
            if strategy == "single"
            else [*launcher, "-m", "tests.strategies.worker"]
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
        return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Runs:
    return Runs(tmp_path_factory.mktemp("strategies"), tiny_model_dir)


def _load(directory: Path, case: str) -> dict:
    return torch.load(directory / f"{case}.pt", weights_only=False)


def _assert_same_run(expected: dict, got: dict, case: str) -> None:
    assert len(got["metrics"]) == len(expected["metrics"])
    for step, (want, have) in enumerate(zip(expected["metrics"], got["metrics"], strict=True)):
        assert want.keys() == have.keys(), (case, step)
        for name, value in want.items():
            if name.endswith("_time"):
                continue
            close = (
                pytest.approx(value, rel=COUNTED_RTOL, abs=0)
                if name in COUNTED
                else pytest.approx(value, rel=0, abs=ATOL)
            )
            assert have[name] == close, (case, step, name)
    assert expected["state"].keys() == got["state"].keys()
    for key, value in expected["state"].items():
        torch.testing.assert_close(got["state"][key], value, rtol=0, atol=ATOL, msg=key)


def _initial_state(case: str, model_dir: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = worker.build_module(case, str(model_dir))
    module.configure_model()
    return module.models.state_dict()


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_two_processes_train_what_one_process_trains(runs, tiny_model_dir, strategy):
    single = runs.get("single-2", "single", 1, steps=2)
    parallel = runs.get(f"{strategy}-2", strategy, 2, steps=2)
    for case in CASES:
        expected, got = _load(single, case), _load(parallel, case)
        _assert_same_run(expected, got, case)
        # Not vacuous: training moved the weights far beyond the tolerance.
        initial = _initial_state(case, tiny_model_dir)
        moved = max((got["state"][k] - v).abs().max().item() for k, v in initial.items())
        assert moved > 100 * ATOL, (case, moved)
        draws = got["draws"]  # each process samples with its own random numbers
        assert len(draws) == 2 and draws[0] != draws[1], draws
        if case == "ppo_lora":  # the adaptive KL controller saw the global batch's KL
            coef = got["final"]["kl_coef"]
            assert coef == pytest.approx(expected["final"]["kl_coef"], rel=1e-6)
            assert coef != 0.05


def test_fsdp2_with_bf16_mixed_precision_trains_near_float32(runs, tiny_model_dir):
    # bf16 layer compute, float32 shards and reductions, beside one float32 process: after
    # one step the bf16 run's update of the weights is the float32 run's, in direction and
    # size (AdamW's first step is lr x sign(gradient) per weight: bf16 may flip the sign of
    # the smallest gradients only). A run whose bf16 weights never moved fails here.
    single = runs.get("single-1", "single", 1, steps=1, save=True)
    mixed = runs.get("fsdp2-bf16-1", "fsdp2-bf16", 2, steps=1)
    for case in CASES:
        expected, got = _load(single, case), _load(mixed, case)
        assert got["metrics"][-1]["train/loss"] == pytest.approx(
            expected["metrics"][-1]["train/loss"], abs=1e-3
        )
        initial = _initial_state(case, tiny_model_dir)
        for key in expected["state"]:
            assert got["state"][key].dtype == torch.float32, key  # shards stay float32
        trained = [k for k in initial if not torch.equal(expected["state"][k], initial[k])]
        assert trained, case
        float32_update = torch.cat([(expected["state"][k] - initial[k]).flatten() for k in trained])
        bf16_update = torch.cat([(got["state"][k] - initial[k]).flatten() for k in trained])
        cosine = torch.nn.functional.cosine_similarity(bf16_update, float32_update, dim=0)
        size = bf16_update.norm() / float32_update.norm()
        assert cosine > BF16_COSINE and abs(size - 1) < BF16_SIZE, (case, cosine, size)


def _assert_equal(expected: object, got: object, where: str) -> None:
    """``got`` is ``expected`` bit for bit: nested dicts and lists of tensors and numbers."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key, value in expected.items():
            _assert_equal(value, got[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), where
        for index, (want, have) in enumerate(zip(expected, got, strict=True)):
            _assert_equal(want, have, f"{where}[{index}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), where
    else:
        assert got == expected, where


def test_checkpoints_resume_at_another_world_size(runs):
    uninterrupted = runs.get("single-2", "single", 1, steps=2)
    runs.get("single-1", "single", 1, steps=1, save=True)  # a full .ckpt file
    runs.get("fsdp2-1", "fsdp2", 2, steps=1, save=True)  # a distributed checkpoint folder
    assert (runs.directory / "fsdp2-1" / "grpo_lora.ckpt").is_dir()
    one_to_two = runs.get("fsdp2-resumed", "fsdp2", 2, steps=2, resume="single-1")
    two_to_one = runs.get("single-fsdp2-resumed", "fsdp2", 1, steps=2, resume="fsdp2-1")
    for saved, resumed in (("single-1", one_to_two), ("fsdp2-1", two_to_one)):
        for case in CASES:
            got = _load(resumed, case)
            # The state the checkpoint held, restored on the other number of processes, bit
            # for bit: weights, AdamW's moments and step, the shuffle, the guard's counts,
            # the rollout counter and seed, PPO's adaptive KL coefficient.
            restored = _load(runs.directory / saved, case)["final"]
            moments = restored["optimizer"]["state"].values()
            assert moments and all(m["step"] > 0 for m in moments), case  # AdamW has stepped
            _assert_equal(restored, got["restored"], f"{case} restored from {saved}")
            # The step after it: as the uninterrupted run's, but for the order in which the
            # other number of processes sums (see the module's docstring).
            expected = _load(uninterrupted, case)
            expected["metrics"] = expected["metrics"][-1:]
            _assert_same_run(expected, got, case)


def test_the_export_gathered_from_shards_is_the_single_process_export(runs, tmp_path):
    sharded = runs.get("fsdp2-1", "fsdp2", 2, steps=1, save=True)
    for case in CASES:
        # The same weights, exported by one process from the gathered state dict.
        module = worker.build_module(case, str(runs.model_dir))
        module.configure_model()
        module.models.load_state_dict(_load(sharded, case)["state"])
        single = save_policy(module.policy, module.tokenizer, tmp_path / case)
        files = ["model.safetensors"]
        if case != "grpo_full":
            files.append("adapter/adapter_model.safetensors")
        for name in files:
            want, have = load_file(single / name), load_file(sharded / f"{case}.policy" / name)
            assert want.keys() == have.keys()
            for key, value in want.items():
                assert torch.equal(have[key], value), (case, name, key)


def test_unsupported_combinations_fail_at_setup_with_the_fix(tiny_model_dir):
    from lightning.pytorch import Trainer
    from lightning.pytorch.plugins import MixedPrecision

    from lit_rl.callbacks import ReferenceSyncCallback
    from lit_rl.strategies import FSDP2Strategy

    module = worker.build_module("grpo_lora", str(tiny_model_dir))
    trainer = Trainer(accelerator="cpu", devices=1, strategy=FSDP2Strategy(), logger=False)
    with pytest.raises(ValueError, match="cannot run under FSDP2Strategy yet.*DDPStrategy"):
        ReferenceSyncCallback().setup(trainer, module, "fit")
    with pytest.raises(ValueError, match="dtype=bfloat16 with FSDP2Strategy.*use dtype auto"):
        FSDP2Strategy(mixed_precision="bf16").weights_dtype("bfloat16")
    assert FSDP2Strategy(mixed_precision="bf16").weights_dtype("auto") == "float32"
    with pytest.raises(ValueError, match="mixed_precision must be"):
        FSDP2Strategy(mixed_precision="fp8")
    # (On a CPU, precision="16-mixed" alone becomes bf16-mixed; the plugin keeps fp16.)
    scaler = MixedPrecision("16-mixed", "cpu")
    half = Trainer(accelerator="cpu", devices=1, plugins=[scaler], logger=False)
    module.trainer = half
    with pytest.raises(ValueError, match="16-mixed scales the loss with a GradScaler"):
        module.setup("fit")


def _lit_rl_on_two_cpu_processes(recipe: str, *args: str, status: int = 0) -> str:
    """``lit-rl fit`` of ``recipe`` with two CPU processes (Lightning's launcher starts the
    second), the tiny settings and ``args``; fails with its stderr unless it exits with
    ``status``, else returns the stderr."""
    from tests.test_cli import TINY

    command = [
        str(Path(sys.executable).with_name("lit-rl")), "fit", "--config", f"recipes/{recipe}.yaml",
        "--trainer.accelerator=cpu", "--trainer.devices=2", *args, *TINY,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == status, result.stderr[-4000:]
    return result.stderr


@pytest.mark.parametrize("engine", ["PackedEngine", "HFGenerateEngine"])
def test_the_fsdp2_recipe_runs_on_two_cpu_processes(tiny_model_dir, tmp_path, engine):
    # The recipe as a user runs it: both processes train, evaluate, checkpoint their shards
    # and export the policy once; with the CPU's engine and with the GPU's (transformers'
    # generate on the gathered policy: FSDP2 must see its first forward at the root).
    _lit_rl_on_two_cpu_processes(
        "grpo_math_fsdp",
        f"--model.init_args.model={tiny_model_dir}",
        f"--model.init_args.engine=lit_rl.rollout.{engine}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
    )
    checkpoints = tmp_path / "grpo_math_fsdp" / "version_0" / "checkpoints"
    shards = sorted(p.name for p in (checkpoints / "last.ckpt").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    assert (checkpoints / "policy" / "model.safetensors").is_file()
    assert (checkpoints / "policy" / "adapter" / "adapter_model.safetensors").is_file()
    meta = torch.load(checkpoints / "last.ckpt" / "meta.pt", weights_only=True)
    assert meta["global_step"] == 2
    # lit-rl export joins the shards in one process: the policy the run exported at its end.
    main(["export", str(checkpoints / "last.ckpt"), str(tmp_path / "export")])
    ours, theirs = (
        load_file(d / "model.safetensors") for d in (tmp_path / "export", checkpoints / "policy")
    )
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_dynamic_sampling_steps_every_process_together(tiny_model_dir, tmp_path):
    # Each process keeps its own groups, so one is full while another still draws; they must
    # take every optimizer step together (a process stepping alone would hang the others'
    # gradient all-reduce), until max_steps.
    _lit_rl_on_two_cpu_processes(
        "grpo_math_dapo",
        f"--model.init_args.model={tiny_model_dir}",
        f"--data.init_args.tokenizer={tiny_model_dir}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=3",
        "--trainer.val_check_interval=100",
        "--model.init_args.overlong.buffer_length=4",
    )
    last = tmp_path / "grpo_math_dapo" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 3
    rollout = next(v for k, v in checkpoint["callbacks"].items() if "RolloutCallback" in k)
    assert rollout["num_rollouts"] >= 3 and rollout["dynamic_sampling"]["kept"] == []


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_run_continues(
    tiny_model_dir, tmp_path
):
    # A scheduler signals one process (here the second one): both finish the step, write one
    # sharded checkpoint at it (staged, then renamed) and exit 143; the same command with
    # --ckpt_path last continues to max_steps.
    args = [
        f"--model.init_args.model={tiny_model_dir}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.version=0",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=100",
    ]
    stopped = _lit_rl_on_two_cpu_processes(
        "grpo_math_fsdp",
        *args,
        "--trainer.callbacks+=tests.reliability.probes.SignalAfterStep",
        "--trainer.callbacks.step=1",
        "--trainer.callbacks.rank=1",
        status=128 + signal.SIGTERM,
    )
    assert "lit-rl: SIGTERM: stopped after optimizer step 2" in stopped
    checkpoints = tmp_path / "grpo_math_fsdp" / "version_0" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt" / "meta.pt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]  # no staging left
    _lit_rl_on_two_cpu_processes("grpo_math_fsdp", *args, "--ckpt_path=last")
    assert torch.load(checkpoints / "last.ckpt" / "meta.pt", weights_only=True)["global_step"] == 4


def test_a_nan_on_one_process_is_skipped_by_both(tiny_model_dir, tmp_path):
    # One process's loss is NaN at the second optimizer step: DDP's gradient average carries
    # it to both, the global norm is NaN on both, and both skip that step together; they end
    # with the same weights, at max_steps, each having counted one skip.
    state = tmp_path / "state"
    _lit_rl_on_two_cpu_processes(
        "grpo_math",
        "--model=tests.reliability.probes.NaNLossGRPO",
        "--model.init_args.nan_attempts=[1]",
        "--model.init_args.nan_rank=1",
        f"--model.init_args.model={tiny_model_dir}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=3",
        "--trainer.val_check_interval=100",
        "--trainer.callbacks+=tests.reliability.probes.ProcessState",
        f"--trainer.callbacks.path={state}",
    )
    first, second = (torch.load(f"{state}.rank{r}.pt", weights_only=True) for r in (0, 1))
    assert first["global_step"] == second["global_step"] == 3
    assert first["nonfinite_steps"] == second["nonfinite_steps"] == 1
    assert first["weights"].keys() == second["weights"].keys()
    for name, weight in first["weights"].items():
        assert torch.isfinite(weight).all() and torch.equal(weight, second["weights"][name]), name
