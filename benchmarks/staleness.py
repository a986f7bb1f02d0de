"""Rollouts synchronous (S = 0) against ahead (S = 1) after the same wall time: the default
recipe trained for ``--minutes`` with each engine of ``--engines``, one after the other alone on
this machine, then evaluated on the held-out problems (greedy accuracy, the recipe's
evaluation at the end of the run); the optimizer steps it reached, its median step time and
the staleness it trained at.

    python benchmarks/staleness.py --engines packed,packed-ahead --minutes 12
    .venv-vllm/bin/python benchmarks/staleness.py --engines server,server-ahead --minutes 12

Engines as ``benchmarks/engines_in_training.py`` names them (``-ahead``: ``max_staleness`` 1
with token TIS). The end-of-run evaluation is not part of the minutes (Lightning's
``max_time`` stops the training, then the evaluation runs).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lit_rl.commands.plot import read_scalars

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchmarks.engines_in_training import ENGINES, ROLLOUT_ARGS, ROOT, cpu  # noqa: E402


def race(engine: str, minutes: int, folder: Path, num_val: int) -> dict[str, Any]:
    """The default recipe with ``engine`` for ``minutes`` of training, then its evaluation."""
    command = [
        sys.executable, "-m", "lit_rl.cli", "fit", "--config", "recipes/grpo_math.yaml",
        *ENGINES[engine], f"--trainer.max_time=00:00:{minutes:02d}:00",
        "--trainer.val_check_interval=100000",  # one evaluation: at the end
        "--trainer.callbacks=[]",  # the recipe's samples and checkpoints off
        "--trainer.callbacks+=lit_rl.callbacks.RolloutCallback", *ROLLOUT_ARGS.get(engine, []),
        "--trainer.callbacks+=lit_rl.callbacks.EvaluationCallback",
        f"--trainer.logger.init_args.save_dir={folder}",
        f"--trainer.logger.init_args.name={engine}", "--trainer.enable_progress_bar=false",
        f"--data.init_args.num_val={num_val}", "--model.init_args.evaluation.num_samples=0",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{result.stderr[-3000:]}")
    scalars = read_scalars([folder / engine / "version_0"])
    accuracy = scalars["val/greedy_accuracy"]
    step_times = list(scalars["train/step_time"].values())[1:]  # the first loads the engine
    staleness = scalars.get("rollout/staleness", {0: 0.0})
    return {
        "optimizer_steps": max(scalars["train/step_time"]),
        "step_s": statistics.median(step_times),
        "staleness": statistics.mean(staleness.values()),
        "held_out_greedy_accuracy": accuracy[max(accuracy)],
        "k3": statistics.median(scalars["rollout/logprob_mismatch_k3"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="packed,packed-ahead")
    parser.add_argument("--minutes", type=int, default=12)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = {
            engine: race(engine, args.minutes, Path(folder), args.num_val)
            for engine in args.engines.split(",")  # one after the other, alone on the machine
        }
    print(f"## default recipe, {args.minutes} minutes of training each, {cpu()}")
    print(
        f"| engine | optimizer steps | step s | staleness | k3 | held-out greedy ({args.num_val}) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['optimizer_steps']} | {r['step_s']:.2f} | {r['staleness']:.2f} "
            f"| {r['k3']:.2g} | {r['held_out_greedy_accuracy']:.3f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
