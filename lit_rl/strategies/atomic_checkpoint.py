"""Checkpoints written atomically next to their destination (``lit_rl.atomic``): a kill at any
moment of a write leaves the previous checkpoint as it was. (Lightning's own writer stages in
the system's temp folder and moves the file, which is a copy when the two are on different
filesystems, and never syncs.)"""

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_rl.atomic import fsync_directory, staging_path


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
