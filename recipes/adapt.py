"""Adapt a few-shot model to your own labelled images: a LoRA adapter (or fully fine-tuned weights) and a plain
`ViTForImageClassification` that runs in `pipeline("image-classification")` with no custom code.

    python recipes/adapt.py --images my_photos/            # my_photos/{class_name}/*.jpg, a few per class
    python recipes/adapt.py --images user/my-dataset --model runs/minimeta-smat/model --mode full
    python recipes/adapt.py --images my_photos/ --hub_repo_id me/my-classifier   # push classifier + adapter

Every image is a support image. The model is a saved SMAT / ProtoNet (folder or Hub id) or a plain backbone.
Writes `{output_dir}/classifier` (model + image processor) and, for LoRA, `{output_dir}/adapter` (the backbone the
adapter was trained on, with the PEFT adapter in `adapter/lora`).

The same as the command `hf-fewshot adapt` (`hf_fewshot/commands/adapt.py`), as a script.
"""

from hf_fewshot.commands.adapt import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.adapt import main

if __name__ == "__main__":
    main(prog="recipes/adapt.py")
