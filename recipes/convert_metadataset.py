"""Convert the official Meta-Dataset release to parquet (`hf-fewshot convert`).

    python recipes/convert_metadataset.py [config.yaml] [--flag value ...]   # = hf-fewshot convert ...

Usage, flags and defaults: `hf_fewshot/commands/convert_metadataset.py` (or `--help`).
"""

from hf_fewshot.commands.convert_metadataset import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.convert_metadataset import main

if __name__ == "__main__":
    main(prog="recipes/convert_metadataset.py")
