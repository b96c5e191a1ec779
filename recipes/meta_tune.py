"""Meta-tune SMAT or P>M>F (ProtoNet) on episodes, then compare it with the un-tuned backbone on every test domain.

    python recipes/meta_tune.py                        # embedded default: MiniMeta + tiny ViT, SMAT, ~10 minutes
    python recipes/meta_tune.py recipes/configs/smat_vits16_metadataset.yaml
    python recipes/meta_tune.py --method protonet --output_dir runs/minimeta-pmf
    ACCELERATE_USE_CPU=1 accelerate launch --config_file accelerate_config.yaml recipes/meta_tune.py   # 2 CPU ranks

With the default `--backbone` and no backbone there yet, recipes/pretrain.py runs first with its own defaults.
The meta-tuned model is saved to `{output_dir}/model` (the best validation checkpoint when
`load_best_model_at_end`); the results table goes to stdout and `{output_dir}/results.md` / `results.json`,
the training log to `{output_dir}/log_history.json`.
A rerun resumes from the last complete checkpoint in `output_dir`; a rerun of a finished run trains nothing (and
evaluates only if its results are missing or the test settings changed).

The same as the command `hf-fewshot meta-tune` (`hf_fewshot/commands/meta_tune.py`), as a script.
"""

from hf_fewshot.commands.meta_tune import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.meta_tune import main

if __name__ == "__main__":
    main(prog="recipes/meta_tune.py")
