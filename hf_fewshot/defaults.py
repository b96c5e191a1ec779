"""The embedded demo's settings, shared by the recipes, the study and the docs: MiniMeta with a tiny ViT.

`recipes/pretrain.py` and `recipes/meta_tune.py` start from these (a YAML file or flags override any of them);
the study (`recipes/reproduce_minimeta.py`) derives its runs from them. The method-specific model settings of the
demo are each method's `demo_settings` (`hf_fewshot.methods`).
"""

from pathlib import Path

TINY_VIT = "tiny-vit"
"""`--backbone` value of the pre-training recipe for a random tiny ViT of `TINY_VIT_CONFIG`."""

# The MiniMeta demo backbone: 32 px images in 8-px patches (16 tokens), 4 layers of width 128.
TINY_VIT_CONFIG = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, image_size=32, patch_size=8
)

PRETRAIN_DEFAULTS = dict(
    output_dir="runs/minimeta-pretrain",
    num_train_epochs=10,
    per_device_train_batch_size=32,
    learning_rate=1e-3,
    weight_decay=0.05,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    sam_rho=0.05,
    image_size=32,
    crop_scale_min=0.6,
    logging_steps=100,
    save_strategy="epoch",
    save_total_limit=1,
    report_to="none",
    dataloader_pin_memory=False,  # CPU demo: nothing to pin to
)

DEFAULT_BACKBONE = str(Path(PRETRAIN_DEFAULTS["output_dir"]) / "backbone")
"""Where the pre-training recipe's defaults put the backbone: the meta-tuning recipe's default `--backbone`."""

# The embedded demo is 800 tasks, 1.6% of the paper's. Besides the model settings (`demo_settings` of SMAT: eval
# gates = training gates), two settings differ from the paper's so that the experts saturate and specialise within
# it (docs/smat.md, "At a small budget"): a 100× gate lr (log α's gradient is ~1e-5 of the clip here, so the
# paper's lr barely moves it) and a 100× smaller multiplier lr (the same Lagrangian push per step).
META_TUNE_DEFAULTS = dict(
    output_dir="runs/minimeta-smat",
    max_steps=400,
    train_episodes_per_epoch=600,
    gradient_accumulation_steps=2,
    learning_rate=0.01,
    weight_decay=1e-4,
    router_learning_rate=1e-3,
    gate_learning_rate=1e8,
    multiplier_learning_rate=5e-4,
    max_grad_norm=0.0,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    episode_protocol="md",
    max_ways=10,
    image_size=32,
    crop_scale_min=0.6,
    eval_episodes=50,
    eval_strategy="steps",
    eval_steps=100,
    save_strategy="steps",
    save_steps=100,
    save_total_limit=2,
    load_best_model_at_end=True,
    metric_for_best_model="accuracy",
    logging_steps=50,
    report_to="none",
    dataloader_pin_memory=False,  # CPU demo: nothing to pin to
    ddp_find_unused_parameters=False,  # every trainable tensor gets a gradient in every task
)

DEFAULT_MODEL = str(Path(META_TUNE_DEFAULTS["output_dir"]) / "model")
"""Where the meta-tuning recipe's defaults put the model: the default of the evaluation and adaptation recipes."""


def require_main_job_output(path: str, flag: str) -> None:
    """A default that names the main job's output (`DEFAULT_MODEL`, `DEFAULT_BACKBONE`, relative to the current
    folder) must exist: else a message saying how to make it, instead of a Hub lookup of a folder name."""
    if path in (DEFAULT_MODEL, DEFAULT_BACKBONE) and not Path(path).is_dir():
        command = "meta-tune" if path == DEFAULT_MODEL else "pretrain"
        raise FileNotFoundError(
            f"No model at {path} (relative to {Path.cwd()}): run `hf-fewshot {command}` here first, or pass {flag} "
            "(a folder or a Hub id)."
        )


__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_MODEL",
    "META_TUNE_DEFAULTS",
    "PRETRAIN_DEFAULTS",
    "TINY_VIT",
    "TINY_VIT_CONFIG",
]
