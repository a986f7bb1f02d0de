"""What each shipped recipe costs on this machine: seconds per rollout step and peak memory.

    python benchmarks/recipes.py                                  # every recipe, 5 rollout steps
    python benchmarks/recipes.py --recipes grpo_math ppo_math --rollouts 8

Each recipe runs as shipped, one after the other, through ``lit-rl fit --config
recipes/<name>.yaml`` in a process of its own (the FSDP2 recipes on two CPU processes), for
``--rollouts`` rollout steps and without evaluation. Its TensorBoard log gives, without the
first rollout step (which warms the allocator and caches), the median of ``train/step_time``
(a whole rollout step: generation, rewards, log-probs and every optimizer step of its update),
of ``rollout/total_time`` (the rollout alone) and of ``rollout/generation_time``; the update is
the step less the rollout. Peak memory is the largest resident set of the recipe's processes
(``wait4``'s ``ru_maxrss``: per process, not summed over the FSDP2 pair). Prints a Markdown
table and writes it, with the raw figures, as JSON to ``--out``.

``grpo_math_local`` is ``grpo_math`` with a model directory the user passes: not run.
"""

import argparse
import importlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_rl.commands.plot import read_scalars

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SHARDED = {"grpo_math_fsdp", "ppo_math_fsdp"}  # run on two CPU processes
# grpo_math_local needs a model directory of the user's; the integrations' recipes need their
# extras (make train installs them; timed separately, docs/environments.md)
NOT_RUN = {"grpo_math_local", "grpo_textarena", "grpo_skyrl_gym", "grpo_reasoning_gym"}


def machine() -> str:
    """The CPU's model name, its cores and torch: what the figures depend on."""
    names = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    cpu = names[0] if names else platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def optimizer_steps_per_rollout(recipe: Path) -> int:
    """``ppo_epochs x num_mini_batches`` of the recipe's module, its defaults where unset."""
    model = yaml.safe_load(recipe.read_text())["model"]
    module_path, _, name = model["class_path"].rpartition(".")
    signature = inspect.signature(getattr(importlib.import_module(module_path), name))
    settings = {
        key: parameter.default
        for key, parameter in signature.parameters.items()
        if parameter.default is not inspect.Parameter.empty
    } | model.get("init_args", {})
    return int(settings.get("ppo_epochs", 1)) * int(settings.get("num_mini_batches", 1))


def run_recipe(name: str, rollouts: int, workdir: Path) -> dict[str, Any]:
    """Train ``name`` for ``rollouts`` rollout steps; its step times and peak memory."""
    recipe = RECIPES / f"{name}.yaml"
    steps = rollouts * optimizer_steps_per_rollout(recipe)
    command = [
        str(Path(sys.executable).with_name("lit-rl")),
        "fit",
        f"--config={recipe}",
        f"--trainer.max_steps={steps}",
        "--trainer.max_time=null",
        "--trainer.val_check_interval=100000",  # above max_steps: no evaluation (short_runs)
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={workdir}",
        f"--trainer.default_root_dir={workdir}",
    ]
    if name in SHARDED:
        command += ["--trainer.accelerator=cpu", "--trainer.devices=2"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "RANK"))}
    log = workdir / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment
        )
        _, status, usage = os.wait4(process.pid, 0)  # usage: the process and its children
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} failed; its output is in {log}")
    (run,) = (workdir / name).glob("version_*")
    curves = read_scalars([run])

    def median_after_first(tag: str) -> float:
        values = [value for _, value in sorted(curves[tag].items())]
        return statistics.median(values[1:] or values)

    step = median_after_first("train/step_time")
    rollout = median_after_first("rollout/total_time")
    return {
        "recipe": name,
        "processes": 2 if name in SHARDED else 1,
        "rollout_steps": len(curves["train/step_time"]),
        "optimizer_steps": steps,
        "step_s": round(step, 1),
        "rollout_s": round(rollout, 1),
        "generation_s": round(median_after_first("rollout/generation_time"), 1),
        "update_s": round(step - rollout, 1),
        "first_step_s": round(sorted(curves["train/step_time"].items())[0][1], 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # Linux reports KiB
        "wall_s": round(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    shipped = sorted(path.stem for path in RECIPES.glob("*.yaml") if path.stem not in NOT_RUN)
    parser.add_argument("--recipes", nargs="+", choices=shipped, default=shipped)
    parser.add_argument("--rollouts", type=int, default=5, help="rollout steps per recipe")
    parser.add_argument("--out", type=Path, default=Path("recipes_bench.json"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="lit_rl_recipes_") as tmp:
        for name in args.recipes:
            rows.append(run_recipe(name, args.rollouts, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(
        json.dumps({"machine": machine(), "rollouts": args.rollouts, "rows": rows}, indent=1)
    )
    print(f"\n{machine()}; the median of rollout steps 2-{args.rollouts} of each recipe\n")
    print(
        "| recipe | processes | s per rollout step | rollout (of it generation) | update "
        "| optimizer steps per rollout | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        per_rollout = row["optimizer_steps"] // row["rollout_steps"]
        print(
            f"| `{row['recipe']}` | {row['processes']} | {row['step_s']} | {row['rollout_s']} "
            f"({row['generation_s']}) | {row['update_s']} | {per_rollout} "
            f"| {row['peak_rss_mib']:,} |"
        )


if __name__ == "__main__":
    main()
