"""Atomic checkpoint writes: the destination is only ever replaced by a complete file or
folder, what a killed write leaves is cleaned up, and an unreadable checkpoint is named."""

import pytest
import torch

from lit_rl.atomic import remove_stale_staging, replace_folder, staging_path
from lit_rl.strategies import AtomicCheckpointIO


def test_a_save_replaces_the_destination_and_leaves_no_staging(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2}, path)
    assert io.load_checkpoint(path) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises(AttributeError, match="Can't pickle"):
        io.save_checkpoint({"step": 2, "unpicklable": lambda: None}, path)
    assert io.load_checkpoint(path) == {"step": 1}
    assert not staging_path(path).exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half a zip"], ids=["empty", "truncated"])
def test_an_unreadable_checkpoint_is_named_with_the_fix(tmp_path, content):
    path = tmp_path / "last.ckpt"
    torch.save({"step": 1}, path)
    path.write_bytes(path.read_bytes()[: len(content)] if content else b"")
    with pytest.raises(ValueError, match=r"'.*last.ckpt' \(\d+ bytes\) is truncated or not a"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_stale_staging_is_removed_and_an_interrupted_folder_swap_is_undone(tmp_path):
    (tmp_path / ".last.ckpt.partial").write_bytes(b"half")
    (tmp_path / ".policy.partial").mkdir()  # a killed export
    (tmp_path / ".policy-abc123").mkdir()  # an earlier lit_rl's killed export
    (tmp_path / ".step=4.ckpt.partial").mkdir()  # a sharded checkpoint's staging folder
    (tmp_path / ".step=2.ckpt.old").mkdir()  # a kill between replace_folder's two renames
    (tmp_path / "step=6.ckpt").mkdir()
    (tmp_path / ".step=6.ckpt.old").mkdir()  # its swap finished: the old copy is garbage
    (tmp_path / "last.ckpt").write_bytes(b"kept")
    changed = remove_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step=2.ckpt", "step=6.ckpt"]
    assert len(changed) == 6 and ".step=2.ckpt.old (restored as step=2.ckpt)" in changed


def test_replace_folder_swaps_in_the_new_folder(tmp_path):
    destination, staging = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.partial"
    destination.mkdir()
    (destination / "old").write_text("1")
    staging.mkdir()
    (staging / "new").write_text("2")
    replace_folder(staging, destination)
    assert sorted(p.name for p in destination.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
