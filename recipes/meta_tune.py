"""Meta-tune SMAT or P>M>F from a backbone, evaluate it, write its card (`hf-fewshot meta-tune`).

    python recipes/meta_tune.py [config.yaml] [--flag value ...]   # = hf-fewshot meta-tune ...

Usage, flags and defaults: `hf_fewshot/commands/meta_tune.py` (or `--help`).
"""

from hf_fewshot.commands.meta_tune import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.meta_tune import main

if __name__ == "__main__":
    main(prog="recipes/meta_tune.py")
