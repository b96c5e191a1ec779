"""Train a backbone (SAM or ERM) on the training classes of some domains (`hf-fewshot pretrain`).

    python recipes/pretrain.py [config.yaml] [--flag value ...]   # = hf-fewshot pretrain ...

Usage, flags and defaults: `hf_fewshot/commands/pretrain.py` (or `--help`).
"""

from hf_fewshot.commands.pretrain import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.pretrain import main

if __name__ == "__main__":
    main(prog="recipes/pretrain.py")
