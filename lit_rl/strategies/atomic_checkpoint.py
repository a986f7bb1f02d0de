"""Checkpoints written atomically next to their destination: a kill at any moment of a write
leaves the previous checkpoint as it was.

A checkpoint is written to a staging name in its own folder (``.<name>.partial``), flushed to
disk (``fsync``), then renamed over the destination; a rename within one filesystem is
atomic, so the destination is always either the old complete checkpoint or the new complete
one. (Lightning's own writer stages in the system's temp folder and moves the file, which is a
copy when the two are on different filesystems, and never syncs.) Staging left by a killed
write is removed by ``remove_stale_staging`` when the next run starts.
"""

import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

PARTIAL = ".partial"  # suffix of a checkpoint being written
OLD = ".old"  # suffix of a checkpoint folder being replaced


def staging_path(destination: Path) -> Path:
    """Where ``destination`` is written before it is renamed into place."""
    return destination.with_name(f".{destination.name}{PARTIAL}")


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (the directory entry itself is synced)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_folder(staging: Path, destination: Path) -> None:
    """Move the complete folder ``staging`` to ``destination``, replacing an existing one.

    A folder cannot be renamed over a non-empty one, so the old folder moves aside first
    (``.<name>.old``); between the two renames only that copy exists, and
    ``remove_stale_staging`` moves it back if a kill fell exactly there.
    """
    old = destination.with_name(f".{destination.name}{OLD}")
    shutil.rmtree(old, ignore_errors=True)
    if destination.exists():
        os.rename(destination, old)
    os.rename(staging, destination)
    fsync_directory(destination.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_staging(directory: Path) -> list[str]:
    """Remove what killed writes left in ``directory``: partial checkpoints and the policy
    export's staging folders; put back a folder that a kill caught between the two renames
    of ``replace_folder``. Returns the names it removed or restored."""
    if not directory.is_dir():
        return []
    changed = []
    for path in sorted(directory.iterdir()):
        name = path.name
        if name.startswith(".") and name.endswith(OLD):
            original = directory / name[1 : -len(OLD)]
            if not original.exists():
                os.rename(path, original)
                changed.append(f"{name} (restored as {original.name})")
                continue
        elif not (name.startswith(".") and (PARTIAL in name or name.startswith(".policy-"))):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        changed.append(name)
    return changed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic writes next to the destination, and a
    load error that names the file when a checkpoint is truncated or not a checkpoint."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if "://" in str(path):  # remote storage (s3://...): fsspec's own transaction
            super().save_checkpoint(checkpoint, path)
            return
        destination = Path(path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_path(destination)
        try:
            with staging.open("wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(staging, destination)
            fsync_directory(destination.parent)
        finally:
            staging.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location, weights_only)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            check_checkpoint_file(Path(path), error)
            raise


def check_checkpoint_file(path: Path, error: BaseException | None = None) -> None:
    """Raise a ``ValueError`` naming ``path`` when it is a file but not a complete checkpoint
    (torch.save's zip archive): truncated, empty, or something else."""
    if not path.is_file() or _readable_archive(path):
        return
    cause = f" ({type(error).__name__})" if error is not None else ""
    raise ValueError(
        f"checkpoint '{path}' ({path.stat().st_size} bytes) is truncated or not a "
        f"checkpoint{cause}: resume from another checkpoint of that folder, or start without "
        "ckpt_path"
    ) from error


def _readable_archive(path: Path) -> bool:
    """Whether ``path`` is a complete zip archive (torch.save's format)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
