"""Fine-tune on your own labelled images; export a classifier and a LoRA adapter (`hf-fewshot adapt`).

    python recipes/adapt.py [config.yaml] [--flag value ...]   # = hf-fewshot adapt ...

Usage, flags and defaults: `hf_fewshot/commands/adapt.py` (or `--help`).
"""

from hf_fewshot.commands.adapt import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.adapt import main

if __name__ == "__main__":
    main(prog="recipes/adapt.py")
