"""Evaluate few-shot models and backbones on the same test episodes (`hf-fewshot evaluate`).

    python recipes/evaluate_fewshot.py [config.yaml] [--flag value ...]   # = hf-fewshot evaluate ...

Usage, flags and defaults: `hf_fewshot/commands/evaluate.py` (or `--help`).
"""

from hf_fewshot.commands.evaluate import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.evaluate import main

if __name__ == "__main__":
    main(prog="recipes/evaluate_fewshot.py")
