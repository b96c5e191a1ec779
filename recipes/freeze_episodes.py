"""Freeze the test episodes of a converted dataset: the row indices of N episodes per domain and protocol, in small
JSON files that ship with the dataset so that every user scores identical tasks.

    python recipes/freeze_episodes.py --data_source data/metadataset --num_episodes 600
    python recipes/freeze_episodes.py --data_source minimeta --output_dir runs/frozen --protocols md fixed

Writes `{output_dir}/{domain}/{split}-{protocol}.episodes.json`; `evaluate_episodes(..., frozen=...)` and
`FrozenEpisodes.load(path)` read them back.

The same as the command `hf-fewshot freeze-episodes` (`hf_fewshot/commands/freeze_episodes.py`), as a script.
"""

from hf_fewshot.commands.freeze_episodes import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.freeze_episodes import main

if __name__ == "__main__":
    main(prog="recipes/freeze_episodes.py")
