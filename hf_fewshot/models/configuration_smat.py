"""Configuration of SMAT, sparse interpolated experts (Chen et al., ICML 2024): every field of docs/smat.md, "The
configuration"."""

import math

from .configuration_fewshot import FewShotConfig

# The paper's schedule: τ_r falls from 5 to 0.5 at 1/4000 per task, i.e. after 18,000 of its 50,000 tasks.
PAPER_META_TRAINING_TASKS = 50_000
PAPER_ROUTER_TAU_DECAY_TASKS = 4000.0


def router_tau_decay_for(num_tasks: int, tau_start: float = 5.0, tau_min: float = 0.5) -> float:
    """The `router_tau_decay_tasks` that brings τ_r to `tau_min` at the same fraction of a `num_tasks`-task training
    as the paper's 4000 does over its 50,000 tasks (36%); 4000 for 50,000 tasks with the default temperatures.

    With the paper's decay, an 800-task run would end at τ_r = 4.8, where every task gets nearly the same mix of
    experts (routing cosine ≥ 0.98 between domains)."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be ≥ 1, got {num_tasks}.")
    if not tau_start > tau_min:
        raise ValueError(f"tau_start ({tau_start}) must exceed tau_min ({tau_min}).")
    paper_fraction = (5.0 - 0.5) * PAPER_ROUTER_TAU_DECAY_TASKS / PAPER_META_TRAINING_TASKS
    return paper_fraction * num_tasks / (tau_start - tau_min)


class SmatConfig(FewShotConfig):
    r"""
    Defaults are the paper's DINO ViT-S/16 settings.

    backbone_config / backbone_name_or_path: the frozen pre-trained backbone θ_pre.
    num_experts (`int`, 8): M sparse experts sharing one dense delta θ_δ.
    masked_parameter_patterns (`list[str]`): regular expressions (`re.search`) over the backbone's in-memory
        parameter names; matching tensors get a delta and expert gates, the others stay at θ_pre.
        Default: every parameter. E.g. `[r"attention\.", r"mlp\."]` for attention + MLP only.
    sparsity_target (`float`, 0.9): τ, the fraction of each expert's gates driven to exactly 0.
    logit_scale (`float`, 10.0): fixed scale of the cosine prototype head (SMAT trains no scale or bias).
    inner_lr (`float`, 1e-3): the first-order inner SGD step on the support set.
    teacher_lr (`float`, 5e-3), teacher_steps (`int`, 1): the dense teacher's gradient steps on the query loss.
    kd_weight (`float`, 0.25), kd_temperature (`float`, 2.0): λ_kd and T of the distillation loss; `kd_weight=0`
        trains without the dense teachers (neither is computed: the "without dense teachers" ablation).
    kd_reverse (`bool`, False): KL(student‖teacher) as the released code instead of KL(teacher‖student).
    gate_beta (`float`, 2/3), gate_beta_eval (`float`, 1.0): hard-concrete temperature in training / eval.
    gate_gamma (`float`, -0.1), gate_zeta (`float`, 1.1): the stretch interval of the hard-concrete gates.
    gate_noise (`float`, 0.0): width of the uniform noise u around 0.5 (0 = deterministic as the release, 1 = full).
    gate_init_std (`float`, 0.5): gate logits log α start at N(0, std²).
    gate_logit_min / gate_logit_max (`float`, ln 0.01 / ln 100): the clamp of log α.
    router_num_skill_tokens (`int`, 4), router_num_heads (`int`, 4), router_mlp_ratio (`float`, 2.0): the router block.
    router_tau_start (`float`, 5.0), router_tau_min (`float`, 0.5), router_tau_decay_tasks (`float`, 4000):
        router relaxation τ_r = max(min, start − n / decay) over n labelled meta-training tasks. 4000 is the paper's
        for 50,000 tasks (τ_min after 36% of training); for another length use `router_tau_decay_for(tasks)`,
        which the recipes do unless the decay is given (docs/smat.md).
    router_logit_penalty (`float`, 1e-4): weight of mean(ℓ²) on the router logits.
    router_top_k (`int`, *optional*): keep only the k highest-scoring experts (default: all, as the paper).
    support_query_split (`bool`, True): meta-train on held-out queries, as the paper. False is the ablation without
        the split ("Meta ×"): every labelled image of a training task is support and query alike, so the inner step
        and the loss see the same images (docs/smat.md).
    """

    model_type = "fewshot_smat"
    summary = (
        "**SMAT** (sparse interpolated experts): a frozen pre-trained ViT plus one dense delta shared by sparse "
        "experts; a router reads a task's support set and merges the experts into one task-specific ViT, which "
        "classifies queries by cosine similarity to the class prototypes."
    )
    papers = (
        "Chen et al., *Unleashing the Power of Meta-tuning for Few-shot Generalization Through Sparse Interpolated "
        "Experts*, ICML 2024 ([arXiv:2403.08477](https://arxiv.org/abs/2403.08477))",
        "Caron et al., *Emerging Properties in Self-Supervised Vision Transformers* (DINO), ICCV 2021",
    )

    num_experts: int = 8
    masked_parameter_patterns: list[str] | None = None
    sparsity_target: float = 0.9
    inner_lr: float = 1e-3
    teacher_lr: float = 5e-3
    teacher_steps: int = 1
    kd_weight: float = 0.25
    kd_temperature: float = 2.0
    kd_reverse: bool = False
    gate_beta: float = 2 / 3
    gate_beta_eval: float = 1.0
    gate_gamma: float = -0.1
    gate_zeta: float = 1.1
    gate_noise: float = 0.0
    gate_init_std: float = 0.5
    gate_logit_min: float = math.log(0.01)
    gate_logit_max: float = math.log(100.0)
    router_num_skill_tokens: int = 4
    router_num_heads: int = 4
    router_mlp_ratio: float = 2.0
    router_tau_start: float = 5.0
    router_tau_min: float = 0.5
    router_tau_decay_tasks: float = 4000.0
    router_logit_penalty: float = 1e-4
    router_top_k: int | None = None
    support_query_split: bool = True

    @classmethod
    def settings_for_training(cls, settings: dict, num_tasks: int) -> dict:
        """Without a given `router_tau_decay_tasks`, the decay that brings τ_r to its minimum after 36% of the
        `num_tasks` training tasks, as the paper's 4000 does over its 50,000 (`router_tau_decay_for`)."""
        settings = dict(settings)
        if "router_tau_decay_tasks" not in settings:
            start, end = (
                settings.get("router_tau_start", cls.router_tau_start),
                settings.get("router_tau_min", cls.router_tau_min),
            )
            settings["router_tau_decay_tasks"] = router_tau_decay_for(num_tasks, start, end)
        return settings

    def __post_init__(self, **kwargs):
        if self.masked_parameter_patterns is None:
            self.masked_parameter_patterns = [".*"]
        super().__post_init__(**kwargs)
        if not 0.0 <= self.sparsity_target < 1.0:
            raise ValueError(f"sparsity_target must lie in [0, 1), got {self.sparsity_target}.")
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be ≥ 1, got {self.num_experts}.")
        if not 0.0 <= self.gate_noise <= 1.0:
            raise ValueError(f"gate_noise must lie in [0, 1], got {self.gate_noise}.")
        if self.router_top_k is not None and not 1 <= self.router_top_k <= self.num_experts:
            raise ValueError(f"router_top_k must lie in 1..num_experts, got {self.router_top_k}.")


__all__ = ["SmatConfig", "router_tau_decay_for"]
