"""Does a change keep behaviour bit for bit? Record the recipes' runs before and after it, then
compare: every logged scalar of every optimizer step and evaluation (timings left out) and
every final weight must be equal.

    python -m tests.reliability.equivalence record OUT [--cases grpo,ppo] [--tiny-model DIR]
    python -m tests.reliability.equivalence compare BEFORE AFTER [--rename old=new ...]

Runs are the ``lit-rl`` CLI in their own processes, on this machine (a record compares only
with one made on the same CPU kind): GRPO, PPO with its critic, DAPO with dynamic sampling and
2-process FSDP2 on the embedded model (a few steps each, ~10 minutes in all), and, with
``--tiny-model``, options the recipes leave off (minibatches, several epochs, TIS, overlong
filtering, the adaptive KL, REINFORCE++, process supervision) on a tiny local model. The
recorder needs nothing of lit_rl but the optimizer step, so one made before a change records
the same way after it. ``--rename`` maps a metric renamed by the change.
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

ROOT = Path(__file__).parents[2]
EMBEDDED = ["--data.init_args.num_val=4", "--data.init_args.val_batch_size=4"]
QUIET = ["--trainer.enable_progress_bar=false"]


def cases(tiny_model: str | None) -> dict[str, list[str]]:
    """Each case's ``lit-rl fit`` arguments."""
    runs = {
        "grpo": ["recipes/grpo_math.yaml", "--trainer.max_steps=3", "--trainer.val_check_interval=2"],
        "ppo": ["recipes/ppo_math.yaml", "--trainer.max_steps=8", "--trainer.val_check_interval=1"],
        "dapo": ["recipes/grpo_math_dapo.yaml", "--trainer.max_steps=3"],
        "fsdp": [
            "recipes/grpo_math_fsdp.yaml", "--trainer.max_steps=2",
            "--trainer.accelerator=cpu", "--trainer.devices=2",
        ],
    }  # fmt: skip
    runs = {name: [*args, *EMBEDDED] for name, args in runs.items()}
    if tiny_model is None:
        return runs
    tiny = [
        f"--model.init_args.model={tiny_model}", "--model.init_args.num_generations=4",
        "--model.init_args.max_completion_length=12", "--data.init_args.batch_size=2",
        "--model.init_args.lora.target_modules=[q_proj,v_proj]", "--data.init_args.num_train=16",
        "--trainer.val_check_interval=2", "--model.init_args.dtype=float32",
        "--model.init_args.learning_rate=1e-2", *EMBEDDED,
    ]  # fmt: skip
    return runs | {
        "tiny_grpo_minibatches": [
            "recipes/grpo_math.yaml", "--trainer.max_steps=8", "--model.init_args.num_mini_batches=2",
            "--model.init_args.num_iterations=2", "--model.init_args.gradient_accumulation_steps=3",
            "--model.init_args.sampler_correction.mode=token_tis",
            "--model.init_args.overlong.mask_truncated_completions=true", *tiny,
        ],
        "tiny_ppo": ["recipes/ppo_math.yaml", "--trainer.max_steps=12", "--model.init_args.kl_target=0.01", *tiny],
        "tiny_dapo": [
            "recipes/grpo_math_dapo.yaml", "--trainer.max_steps=4", "--model.init_args.num_mini_batches=2",
            "--model.init_args.overlong.buffer_length=4", *tiny,
        ],
        "tiny_reinforce_pp": ["recipes/reinforce_pp_math.yaml", "--trainer.max_steps=4", *tiny],
        "tiny_process": ["recipes/grpo_math_process.yaml", "--trainer.max_steps=3", *tiny],
    }  # fmt: skip


class EquivalenceRecorder(Callback):
    """Rank 0 appends, after every training batch that took optimizer steps, every logged
    scalar but timings, and after every evaluation its ``val/*``, to ``path`` as JSON lines; at
    the end it writes the module's full state dict (gathered from every process) beside it."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.last_step = 0

    def _append(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(row) + "\n")  # repr of each float: read back bit for bit

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.last_step:  # no update on this batch
            return
        self.last_step = trainer.global_step
        if trainer.is_global_zero:
            row = {"step": trainer.global_step, "batch": batch_idx}
            for name, value in sorted(trainer.callback_metrics.items()):
                if not name.endswith("_time"):
                    row[name] = float(value)
            self._append(row)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            row = {"validation_at": trainer.global_step}
            metrics = sorted(trainer.callback_metrics.items())
            self._append(row | {k: float(v) for k, v in metrics if k.startswith("val/")})

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:  # sharded: a collective, every process takes part
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(pl_module, options=options)
        else:
            state = pl_module.state_dict()
        if trainer.is_global_zero:
            weights = {k: v.detach().cpu().clone() for k, v in state.items()}
            torch.save(weights, self.path.with_suffix(".weights.pt"))


def record(out: Path, names: list[str], tiny_model: str | None) -> None:
    runs = cases(tiny_model)
    for name in names:
        case = out / name
        case.mkdir(parents=True, exist_ok=True)
        steps = case / "steps.jsonl"
        steps.unlink(missing_ok=True)
        command = [
            str(Path(sys.executable).with_name("lit-rl")), "fit", "--config", *runs[name], *QUIET,
            f"--trainer.logger.init_args.save_dir={case / 'runs'}",
            "--trainer.callbacks+=tests.reliability.equivalence.EquivalenceRecorder",
            f"--trainer.callbacks.path={steps}",
        ]  # fmt: skip
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        (case / "log.txt").write_text(result.stdout + result.stderr)
        status = "ok" if result.returncode == 0 else f"failed ({case / 'log.txt'})"
        print(f"{name}: {status}, {time.perf_counter() - start:.0f} s", flush=True)


def _rows(case: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (case / "steps.jsonl").read_text().splitlines()]


def _same(a: object, b: object) -> bool:
    nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return a == b or nan


def compare(before: Path, after: Path, rename: dict[str, str]) -> int:
    """Print each case's differences; the number of cases that differ."""
    differing = 0
    for case in sorted(p.name for p in after.iterdir() if (p / "steps.jsonl").exists()):
        rows_before = [
            {rename.get(k, k): v for k, v in row.items()} for row in _rows(before / case)
        ]
        rows_after = _rows(after / case)
        differences = [] if len(rows_before) == len(rows_after) else ["the rows differ in number"]
        for old, new in zip(rows_before, rows_after, strict=False):
            where = old.get("step", old.get("validation_at"))
            differences += [
                f"{where}: {key} {old.get(key)} -> {new.get(key)}"
                for key in sorted(old.keys() | new.keys())
                if not _same(old.get(key), new.get(key))
            ]
        weights = [
            torch.load(d / case / "steps.weights.pt", weights_only=True) for d in (before, after)
        ]
        if weights[0].keys() != weights[1].keys():
            differences.append(
                f"weights differ in names: {sorted(weights[0].keys() ^ weights[1].keys())[:4]}"
            )
        largest = max(
            (float((weights[0][k].double() - weights[1][k].double()).abs().max()) for k in weights[0].keys() & weights[1].keys()),
            default=0.0,
        )  # fmt: skip
        values = sum(len(row) for row in rows_after)
        print(
            f"{case}: {len(rows_after)} rows, {values} values, {len(weights[1])} tensors: "
            f"{len(differences)} differences, largest weight difference {largest}"
        )
        for difference in differences[:10]:
            print(f"    {difference}")
        differing += bool(differences) or largest != 0.0
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    recording = commands.add_parser("record")
    recording.add_argument("out", type=Path)
    recording.add_argument("--cases", default=None, help="comma-separated; default: all")
    recording.add_argument("--tiny-model", default=None, help="a tiny local model directory")
    comparing = commands.add_parser("compare")
    comparing.add_argument("before", type=Path)
    comparing.add_argument("after", type=Path)
    comparing.add_argument("--rename", nargs="*", default=[], help="old=new metric names")
    args = parser.parse_args()
    if args.command == "record":
        names = args.cases.split(",") if args.cases else list(cases(args.tiny_model))
        record(args.out, names, args.tiny_model)
    else:
        rename = dict(item.split("=", 1) for item in args.rename)
        sys.exit(min(compare(args.before, args.after, rename), 1))


if __name__ == "__main__":
    main()
