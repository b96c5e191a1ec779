"""Supervised backbone training with SAM or ERM on the training classes of one or more domains.

See docs/sam.md, "Pre-training a backbone".

    python recipes/pretrain.py                                 # tiny ViT on MiniMeta's training domains, SAM
    python recipes/pretrain.py --sam_rho 0 --output_dir runs/minimeta-pretrain-erm
    python recipes/pretrain.py recipes/configs/pretrain_vits16_sam.yaml --domains omniglot
    accelerate launch --config_file accelerate_config.yaml recipes/pretrain.py [config.yaml] [--flag value ...]

The backbone (e.g. a `ViTModel`) is saved to `{output_dir}/backbone`, ready for `--backbone` of meta_tune.py or
`SmatModel.from_backbone`. A rerun resumes from the last complete checkpoint in `output_dir`; a rerun of a finished
run trains nothing.

The same as the command `hf-fewshot pretrain` (`hf_fewshot/commands/pretrain.py`), as a script.
"""

from hf_fewshot.commands.pretrain import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.pretrain import main

if __name__ == "__main__":
    main(prog="recipes/pretrain.py")
