"""``lit-rl plot``: TensorBoard scalars of one or more log folders joined into curves and drawn
as a PNG of the four default panels (or the tags asked for)."""

from pathlib import Path

import pytest
from matplotlib.image import imread
from torch.utils.tensorboard import SummaryWriter

from lit_rl.cli import main
from lit_rl.commands.plot import PANELS, moving_average, plot, read_scalars


def _write(folder: Path, scalars: dict[str, dict[int, float]]) -> Path:
    writer = SummaryWriter(str(folder))
    for tag, curve in scalars.items():
        for step, value in curve.items():
            writer.add_scalar(tag, value, step)
    writer.close()
    return folder


def test_moving_average_by_hand():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([4.0, 0.0, 2.0], 5) == [4.0, 2.0, 2.0]
    assert moving_average([3.0, 5.0], 1) == [3.0, 5.0]


def test_folders_join_into_one_curve_the_later_winning(tmp_path):
    before = _write(tmp_path / "validate", {"val/greedy_accuracy": {0: 0.20}})
    run = _write(
        tmp_path / "fit",
        {"val/greedy_accuracy": {10: 0.25, 20: 0.31}, "rollout/reward": {1: 0.1, 2: 0.3}},
    )
    again = _write(tmp_path / "again", {"rollout/reward": {2: 0.5, 3: 0.4}})
    curves = read_scalars([before, run, again])
    assert curves["val/greedy_accuracy"] == pytest.approx({0: 0.20, 10: 0.25, 20: 0.31})
    assert curves["rollout/reward"] == pytest.approx({1: 0.1, 2: 0.5, 3: 0.4})


def test_the_four_panels_are_drawn_with_ppo_kl_where_grpo_kl_is_missing(tmp_path):
    steps = range(1, 31)
    ppo = {
        "rollout/reward": {s: s / 30 for s in steps},
        "rollout/kl": {s: 0.01 * s for s in steps},  # PPO's: no train/kl
        "rollout/completion_len": {s: 40.0 - s / 3 for s in steps},
        "val/greedy_accuracy": {0: 0.2, 10: 0.3, 20: 0.35, 30: 0.4},
    }
    out = tmp_path / "figures" / "curve.png"
    drawn = plot(read_scalars([_write(tmp_path / "run", ppo)]), PANELS, out, "ppo", 10)
    assert drawn == [
        "rollout/reward",
        "val/greedy_accuracy",
        "rollout/kl",
        "rollout/completion_len",
    ]
    image = imread(out)
    assert image.shape[:2] == (round(2 * 3.6 * 110), 2 * 6 * 110)  # 2 x 2 panels at 110 dpi
    assert (image[..., :3] < 0.5).any()  # something dark was drawn on the white figure


def test_bad_folders_and_missing_tags_name_the_fix(tmp_path, capsys):
    run = _write(tmp_path / "run", {"rollout/reward": {1: 0.5}})
    cases = [
        ([str(tmp_path / "nothing")], "holds no TensorBoard event files"),
        ([str(run)], "the logs have none of val/greedy_accuracy"),
        ([str(run), "--tag", "train/loss"], "they hold rollout/reward"),
        ([str(run), "--window", "0"], "--window must be >= 1"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["plot", *args, "--out", str(tmp_path / "x.png")])
        assert exit_info.value.code == 2, args
        assert message in capsys.readouterr().err, args
    main(["plot", str(run), "--tag", "rollout/reward", "--out", str(tmp_path / "one.png")])
    assert imread(tmp_path / "one.png").shape[:2] == (round(3.6 * 110), 6 * 110)
