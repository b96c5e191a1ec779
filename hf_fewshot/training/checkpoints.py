"""Saving that never leaves half-written folders behind, and resuming from the last complete checkpoint."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors import SafetensorError, safe_open
from transformers import ImageProcessingMixin, PreTrainedModel

from hf_fewshot.files import staged_folder, write_atomically

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def save_pretrained_atomically(
    model: PreTrainedModel,
    folder: str | os.PathLike,
    image_processor: ImageProcessingMixin | None = None,
    **save_kwargs,
) -> Path:
    """`model.save_pretrained(folder, **save_kwargs)` (and `image_processor.save_pretrained(folder)`) written whole
    or not at all (`hf_fewshot.files.staged_folder`): a crash leaves the previous folder or the complete new one.
    Few-shot models write their own processor and card; a plain backbone needs `image_processor`. Non-finite
    weights are never written."""
    folder = Path(folder)
    check_finite_weights(model, f"Not saving {folder}")
    _repair_interrupted_save(folder)  # also removes the staging folders a killed save left
    with staged_folder(folder) as staging:
        model.save_pretrained(staging, **save_kwargs)
        if image_processor is not None:
            image_processor.save_pretrained(staging)
    return folder


def run_is_finished(folder: str | os.PathLike, settings: Mapping) -> bool:
    """Whether `folder` (e.g. `{output_dir}/model`) holds the final save of a finished run with these `settings`:
    then a rerun reuses it instead of training again.

    The settings are recorded beside the folder (`run_settings.json`) when a run starts. A rerun with other settings
    into a folder that already holds its checkpoints or final save is an error naming them: it is never resumed,
    reused or overwritten with a mixture of the two. The main process also repairs an interrupted final save (a
    crash between the swap's renames) and removes its staging folders; the other processes wait for it."""
    folder = Path(folder)
    record = folder.parent / "run_settings.json"
    settings = json.loads(json.dumps(dict(settings)))  # as the record will read back
    state = PartialState()
    if state.is_main_process:
        _repair_interrupted_save(folder)
    state.wait_for_everyone()
    started = (folder / "config.json").is_file() or any(folder.parent.glob("checkpoint-*"))
    if record.is_file():
        recorded = json.loads(record.read_text())
        changed = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
        if changed and started:
            raise ValueError(
                f"{folder.parent} holds a run with other settings ({', '.join(changed)}); give another output_dir, "
                "or delete it to train again."
            )
    if (folder / "config.json").is_file():
        return True
    if state.is_main_process:
        write_atomically(record, json.dumps(settings, indent=1) + "\n")
    state.wait_for_everyone()
    return False


def _repair_interrupted_save(folder: Path) -> None:
    """Undo what a crash inside `save_pretrained_atomically` left: put the previous save back if the new one never
    arrived, and remove the staging folders."""
    previous = folder.with_name(f".{folder.name}-previous")
    if previous.is_dir() and not folder.exists():
        previous.rename(folder)
    for staging in folder.parent.glob(f".{folder.name}-*"):
        if staging.is_dir() and staging != previous:
            shutil.rmtree(staging, ignore_errors=True)


def check_finite_weights(model: torch.nn.Module, context: str) -> None:
    """Raise if any floating-point tensor of `model` holds NaN or inf: a diverged model is never written."""
    broken = [
        name
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if broken:
        raise FloatingPointError(
            f"{context}: {len(broken)} tensor(s) hold NaN or inf (e.g. {', '.join(broken[:3])}); training diverged. "
            "Try a smaller learning rate."
        )


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The `checkpoint-N` folder with the largest N whose every file parses: `trainer_state.json` (the Trainer
    writes it last) and the other JSON files, the safetensors headers and the torch archives (optimizer,
    scheduler, RNG states). A checkpoint cut short by a crash or a full disk is skipped, with a warning, so the
    run resumes from the one before instead of crashing on every rerun."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        ((int(match.group(1)), path) for path in output_dir.iterdir() if (match := _CHECKPOINT.match(path.name))),
        reverse=True,
    )
    for _, path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        warnings.warn(f"Skipping the incomplete checkpoint {path}: {problem}.", stacklevel=2)
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint, or None."""
    if not (folder / "trainer_state.json").is_file():
        return "no trainer_state.json"
    for file in sorted(folder.iterdir()):
        try:
            if file.suffix == ".json":
                json.loads(file.read_text())
            elif file.suffix == ".safetensors":
                with safe_open(file, framework="pt") as weights:
                    weights.keys()
            elif file.suffix in (".pt", ".pth", ".bin"):
                zipfile.ZipFile(file).close()  # torch.save archives: a truncated one has no central directory
        except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as error:
            return f"{file.name} does not parse ({type(error).__name__}: {error})"
    return None
