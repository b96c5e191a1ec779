"""Saving that never leaves half-written folders behind, and resuming from the last complete checkpoint."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedModel

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def save_pretrained_atomically(model: PreTrainedModel, folder: str | os.PathLike) -> Path:
    """`model.save_pretrained(folder)` written into a sibling temporary folder and renamed into place: a crash
    leaves the previous folder or the complete new one, never a partial save (a crash between the swap's two
    renames leaves the previous one aside, and the next save puts it back first)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    previous = folder.with_name(f".{folder.name}-previous")
    if previous.is_dir() and not folder.exists():  # a crash between the two renames below: put the old one back
        previous.rename(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the saved folder gets the usual permissions
    try:
        model.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
            staging.rename(folder)
            shutil.rmtree(previous)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The `checkpoint-N` folder with the largest N that holds `trainer_state.json` — the Trainer writes it last,
    so a checkpoint interrupted mid-save is skipped instead of crashing the resume."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    complete = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if (match := _CHECKPOINT.match(path.name)) and (path / "trainer_state.json").is_file()
    ]
    return str(max(complete)[1]) if complete else None
