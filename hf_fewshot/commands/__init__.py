"""The `hf-fewshot` command line: one sub-command per recipe, runnable from any folder.

    hf-fewshot pretrain | meta-tune | evaluate | adapt | convert | freeze-episodes  [config.yaml] [--flag value ...]
    hf-fewshot <command> --help

Each sub-command is a module of this package (`parse arguments, call the library, print`); `recipes/*.py` run the
same code as scripts. A mistake of the user's (a bad setting, a missing file or model, a run that diverged) ends
with a one-line message and exit status 2, not a traceback; relative paths are taken from the current folder.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "pretrain": ("pretrain", "train a backbone (SAM or ERM) on the training classes of some domains"),
    "meta-tune": ("meta_tune", "meta-tune SMAT or P>M>F from a backbone, evaluate it, write its card"),
    "evaluate": ("evaluate", "evaluate few-shot models and backbones on the same test episodes"),
    "adapt": ("adapt", "fine-tune on your own labelled images; export a classifier and a LoRA adapter"),
    "convert": ("convert_metadataset", "convert the official Meta-Dataset release to parquet"),
    "freeze-episodes": ("freeze_episodes", "freeze test episodes into small JSON files"),
}
USER_ERRORS = (ValueError, OSError, FloatingPointError)  # settings, files and models, divergence


def usage() -> str:
    lines = ["usage: hf-fewshot <command> [config.yaml] [--flag value ...]", "", "commands:"]
    lines += [f"  {name:<16} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join([*lines, "", "`hf-fewshot <command> --help` lists a command's flags."])


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hf-fewshot argv`; returns the exit status (0, or 2 for a user error, with its message on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, *rest = argv
    if name not in COMMANDS:
        print(f"hf-fewshot: error: unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    command = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    try:
        command.main(rest, prog=f"hf-fewshot {name}")
    except USER_ERRORS as error:
        print(f"hf-fewshot {name}: error: {error}", file=sys.stderr)
        return 2
    return 0


def console_main() -> None:
    """The `hf-fewshot` console script."""
    sys.exit(main())


__all__ = ["COMMANDS", "console_main", "main"]
