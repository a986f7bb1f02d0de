"""Replacing files and folders on disk atomically: a kill at any moment leaves the old
complete version or the new complete one, never a mix.

A file or folder is written under a staging name in its destination's folder
(``.<name>.partial``), flushed to disk, then renamed over the destination (a rename within one
filesystem is atomic). What a killed write leaves behind is removed by
``remove_stale_staging`` when the next run starts.
"""

import os
import shutil
from pathlib import Path

PARTIAL = ".partial"  # suffix of a file or folder being written
OLD = ".old"  # suffix of a folder being replaced
LEGACY_EXPORT = ".policy-"  # how earlier lit_rl versions named a policy export being written


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


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk (before it is renamed into place)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())


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
    """Remove what killed writes left in ``directory``: partial checkpoints and exports (and
    the export staging folders of earlier lit_rl versions); put back a folder that a kill
    caught between the two renames of ``replace_folder``. Returns the names it removed or
    restored."""
    if not directory.is_dir():
        return []
    changed = []
    for path in sorted(directory.iterdir()):
        name = path.name
        if not name.startswith("."):
            continue
        original = directory / name[1 : -len(OLD)]
        if name.endswith(OLD) and not original.exists():
            os.rename(path, original)
            changed.append(f"{name} (restored as {original.name})")
        elif name.endswith(OLD) or PARTIAL in name or name.startswith(LEGACY_EXPORT):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            changed.append(name)
    return changed
