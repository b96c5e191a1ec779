"""Evaluate few-shot models on fixed test episodes: per-domain accuracy ± 95% CI, ID / OOD averages, one table.

    python recipes/evaluate_fewshot.py                                           # the main job's models on MiniMeta
    python recipes/evaluate_fewshot.py --models runs/minimeta-smat/model facebook/dino-vits16 \
        --data_source data/metadataset --domains ilsvrc_2012 omniglot traffic_sign --image_size 128
    python recipes/evaluate_fewshot.py --finetune_mode lora --finetune_steps 50  # fine-tune on each support set first

A model is a saved `SmatModel` / `ProtoNetModel` (folder or Hub id) or a plain HF backbone (evaluated with
cosine prototypes, scale 10). All models see the same episodes. The table goes to stdout and `--output`.

The same as the command `hf-fewshot evaluate` (`hf_fewshot/commands/evaluate.py`), as a script.
"""

from hf_fewshot.commands.evaluate import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.evaluate import main

if __name__ == "__main__":
    main(prog="recipes/evaluate_fewshot.py")
