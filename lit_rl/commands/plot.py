"""``lit-rl plot``: a run's learning curves from its TensorBoard logs, as one PNG.

The default panels are the four a researcher reads first: the sampled reward, the held-out
greedy accuracy, the KL to the reference and the completion length, over rollout steps.
Several log folders join into one curve (a ``lit-rl validate`` of the base model before the
run gives the held-out accuracy at step 0; a resumed run's folders continue each other).
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

HELP = "draw a run's reward, held-out accuracy, KL and length curves from its logs (PNG)"


@dataclass(frozen=True)
class Panel:
    """One subplot: the first of ``tags`` the logs hold, drawn against the step."""

    title: str
    tags: tuple[str, ...]
    smooth: bool = True  # per-step rollout metrics are noisy; evaluations are not


PANELS = (
    Panel("sampled reward", ("rollout/reward",)),
    Panel("held-out greedy accuracy", ("val/greedy_accuracy",), smooth=False),
    # GRPO logs the mean k3 per token it puts in its loss; PPO the sum of k1 over a
    # completion that it subtracts from the reward.
    Panel("KL to the reference", ("train/kl", "rollout/kl")),
    Panel("completion length (tokens)", ("rollout/completion_len",)),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", type=Path, help="log folders (runs/<name>/version_N); later ones "
        "win where two log the same tag at the same step"
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", help="the figure's title (default: the first folder)")
    parser.add_argument(
        "--tag", action="append", dest="tags", metavar="TAG", help="a scalar to draw instead "
        "of the default four panels (repeat for more)"
    )  # fmt: skip
    parser.add_argument(
        "--window", type=int, default=10, help="steps in the moving average drawn over noisy "
        "per-step metrics (1: none)"
    )  # fmt: skip


def read_scalars(runs: list[Path]) -> dict[str, dict[int, float]]:
    """Every scalar tag of ``runs``' event files as ``{tag: {step: value}}``."""
    curves: dict[str, dict[int, float]] = {}
    for run in runs:
        if not run.is_dir() or not any(run.glob("events.out.tfevents.*")):
            raise ValueError(
                f"'{run}' holds no TensorBoard event files: pass a run's log folder, "
                "e.g. runs/grpo_math/version_0"
            )
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every step
        events.Reload()
        for tag in events.Tags()["scalars"]:
            curve = curves.setdefault(tag, {})
            curve.update({event.step: event.value for event in events.Scalars(tag)})
    return curves


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def panels_for(tags: list[str] | None) -> tuple[Panel, ...]:
    if not tags:
        return PANELS
    return tuple(Panel(tag, (tag,)) for tag in tags)


def plot(
    curves: dict[str, dict[int, float]],
    panels: tuple[Panel, ...],
    out: Path,
    title: str,
    window: int,
) -> list[str]:
    """Draws ``panels`` from ``curves`` into ``out``; returns the tags drawn, one per panel."""
    try:
        import matplotlib
    except ImportError as error:
        raise ValueError("lit-rl plot needs matplotlib: pip install 'lit_rl[plot]'") from error
    matplotlib.use("Agg")  # a file, never a window: runs on a headless machine
    from matplotlib import pyplot

    drawn = []
    for panel in panels:
        tag = next((t for t in panel.tags if t in curves), None)
        if tag is None:
            raise ValueError(
                f"the logs have none of {', '.join(panel.tags)} (panel '{panel.title}'): "
                f"choose scalars with --tag; they hold {', '.join(sorted(curves)) or 'none'}"
            )
        drawn.append(tag)

    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(6 * columns, 3.6 * rows), squeeze=False)
    for axis, panel, tag in zip(list(axes.flat)[: len(panels)], panels, drawn, strict=True):
        steps = sorted(curves[tag])
        values = [curves[tag][step] for step in steps]
        if panel.smooth and window > 1:
            axis.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
            label = f"mean of {window} steps"
            axis.plot(steps, moving_average(values, window), color="tab:blue", label=label)
            axis.legend(loc="best", fontsize="small")
        else:
            axis.plot(steps, values, color="tab:blue", marker="o")
        axis.set_title(f"{panel.title}  [{tag}]", fontsize="medium")
        # Lightning's logging step: training batches, i.e. rollout steps (PPO takes
        # ppo_epochs x num_mini_batches optimizer steps in each).
        axis.set_xlabel("rollout step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    pyplot.close(figure)
    return drawn


def run(args: argparse.Namespace) -> Path:
    if args.window < 1:
        raise ValueError("--window must be >= 1")
    curves = read_scalars(args.runs)
    title = args.title or str(args.runs[0])
    drawn = plot(curves, panels_for(args.tags), args.out, title, args.window)
    print(f"lit-rl: drew {', '.join(drawn)} into {args.out}", file=sys.stderr)
    return args.out
