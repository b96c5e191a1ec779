"""Freeze test episodes into small JSON files (`hf-fewshot freeze-episodes`).

    python recipes/freeze_episodes.py [config.yaml] [--flag value ...]   # = hf-fewshot freeze-episodes ...

Usage, flags and defaults: `hf_fewshot/commands/freeze_episodes.py` (or `--help`).
"""

from hf_fewshot.commands.freeze_episodes import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.freeze_episodes import main

if __name__ == "__main__":
    main(prog="recipes/freeze_episodes.py")
