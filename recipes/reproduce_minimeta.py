"""Reproduce the claims of SMAT (ICML 2024) and of flat backbones (arXiv 2404.07696) in miniature on MiniMeta.

    python recipes/reproduce_minimeta.py            # the study (≈ 100 minutes on 2 CPU cores) → reports/minimeta/
    python recipes/reproduce_minimeta.py --quick    # every stage on a smoke budget (≤ 10 minutes)
    python recipes/reproduce_minimeta.py --quick --test_episodes 100   # a preset, then flags override it

1. Pre-training: the tiny ViT of recipes/pretrain.py with ERM and with SAM (same epochs), then one backbone per
   training domain fine-tuned from the SAM one with SAM (docs/sam.md, "Pre-training a backbone" "information fusion";
   same steps each).
2. Meta-tuning from the SAM backbone, all on the same tasks (same seed): P>M>F and SMAT on a long budget (the main
   comparison) and on the short one of the SMAT ablations (sparsity τ, number of experts, no dense teachers, no
   support/query split, masks not meta-learned, the paper's gate settings).
3. Evaluation on every MiniMeta test split, all models on the same fixed episodes: each model as is, and the
   backbone, P>M>F and SMAT fine-tuned on every support set (full and LoRA; learning rates chosen on validation
   episodes of the training domains); ERM vs SAM; backbone selection + fine-tuning; routing per domain.
4. The report: `{report_dir}/README.md` (tables, verdict per claim with paired 95% CIs, commands, seeds, wall
   times) and its PNG plots.

Each training stage runs a recipe command (`python recipes/pretrain.py ...`, `python recipes/meta_tune.py ...`),
the one the report lists, as that command runs but in this process; the analysis and the report are the library's
(`hf_fewshot.analysis`, `hf_fewshot.reports`, the template `model_cards/minimeta_report.md`). Every stage keeps its
output under `--output_dir` and is skipped on a rerun; an interrupted training resumes from
its last checkpoint, an interrupted evaluation from its last finished cell.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_fewshot import evaluate_episodes, load_domain
from hf_fewshot.adaptation import BackbonePool
from hf_fewshot.analysis import Claim, routing_weights, validation_curve
from hf_fewshot.data.minimeta import DOMAINS, TRAIN_DOMAINS
from hf_fewshot.defaults import TINY_VIT_CONFIG
from hf_fewshot.evaluation import EvaluationResults
from hf_fewshot.methods import get_method
from hf_fewshot.models import load_fewshot_model
from hf_fewshot.reports import MetaTuningRun, MiniMetaStudy, render_minimeta_report
from hf_fewshot.training.checkpoints import write_atomically
from hf_fewshot.training.cli import parse_recipe_arguments
from hf_fewshot.viz import (
    plot_domain_accuracy,
    plot_expert_density,
    plot_expert_overlap,
    plot_routing_similarity,
    plot_sparsity_tradeoff,
    plot_validation_curves,
)

RECIPES = Path(__file__).resolve().parent  # the study runs its siblings as commands, never imports them
OOD_DOMAINS = tuple(domain for domain in DOMAINS if domain not in TRAIN_DOMAINS)
SMAT_DEMO = get_method("smat").demo_settings  # the SMAT of the main comparison: meta_tune.py's demo settings
MAIN_SPARSITY, MAIN_EXPERTS = SMAT_DEMO["sparsity_target"], SMAT_DEMO["num_experts"]
SAM_RHO = 0.05  # the SAM backbones' ρ

FULL = dict(
    pretrain_epochs=10,
    domain_backbone_steps=300,
    meta_tasks=800,
    long_meta_tasks=4000,
    validation_episodes=50,
    test_episodes=600,
    finetune_episodes=200,
    finetune_steps=5,
    routing_episodes=100,
)
QUICK = dict(
    output_dir="runs/reproduce-minimeta-quick",
    report_dir="runs/reproduce-minimeta-quick/report",  # the committed report is the full study's
    pretrain_epochs=1,
    domain_backbone_steps=30,
    meta_tasks=48,
    long_meta_tasks=96,
    validation_episodes=10,
    test_episodes=40,
    finetune_episodes=12,
    finetune_steps=5,
    routing_episodes=20,
)


@dataclass
class StudyArguments:
    quick: bool = field(default=False, metadata={"help": "The smoke preset (≤ 10 minutes); flags still override it."})
    output_dir: str = field(default="runs/reproduce-minimeta", metadata={"help": "Models, results and timings."})
    report_dir: str = field(default="reports/minimeta", metadata={"help": "The Markdown report and its plots."})
    seed: int = field(default=0, metadata={"help": "Seed of every training run and of the evaluation episodes."})
    pretrain_epochs: float = field(default=10, metadata={"help": "Epochs of the ERM and the SAM backbone."})
    domain_backbone_steps: int = field(default=300, metadata={"help": "SAM steps of each per-domain backbone."})
    meta_tasks: int = field(default=800, metadata={"help": "Tasks of each ablation run (2 per update)."})
    long_meta_tasks: int = field(
        default=4000, metadata={"help": "Tasks of the main P>M>F and SMAT runs (2 per update)."}
    )
    validation_episodes: int = field(
        default=50, metadata={"help": "Validation episodes per training domain (checkpoints, fine-tuning lr)."}
    )
    test_episodes: int = field(default=600, metadata={"help": "Test episodes per domain, the same for every model."})
    finetune_episodes: int = field(
        default=200, metadata={"help": "Test episodes per domain of the fine-tuned rows: the first of the test ones."}
    )
    finetune_steps: int = field(default=5, metadata={"help": "Fine-tuning steps on each support set."})
    finetune_learning_rates: list[float] = field(
        default_factory=lambda: [1e-4, 3e-4, 1e-3],
        metadata={"help": "Grid of the full fine-tuning lr (LoRA: 10×), chosen on validation episodes."},
    )
    routing_episodes: int = field(default=100, metadata={"help": "Episodes per domain for the routing analysis."})
    sparsity_targets: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75], metadata={"help": "τ values."})
    expert_counts: list[int] = field(default_factory=lambda: [2, 4, 8], metadata={"help": "Numbers of experts."})
    max_ways: int = field(default=10, metadata={"help": "Most classes in an episode (Meta-Dataset sampling)."})
    max_support: int = field(default=50, metadata={"help": "Most support images in an episode."})

    def __post_init__(self):
        if MAIN_SPARSITY not in self.sparsity_targets or MAIN_EXPERTS not in self.expert_counts:
            raise ValueError(
                f"sparsity_targets must include {MAIN_SPARSITY} and expert_counts {MAIN_EXPERTS}: the main SMAT "
                "is one point of each ablation."
            )


MAIN_CELLS = {"pmf-long": "P>M>F", "smat-long": "SMAT"}  # the results names of the main comparison's runs


@dataclass(frozen=True)
class MetaRun:
    """One meta-tuning run: its folder (and results) name, how it differs from the short-budget SMAT, and its
    settings over meta_tune.py's defaults (`model_config` over SMAT's demo settings, then training flags)."""

    name: str
    differs: str
    method: str = "smat"
    model_config: Mapping = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    long: bool = False


def run_script(path: Path, argv: list[str]) -> None:
    """`python path argv`, in this process."""
    saved, sys.argv = sys.argv, [str(path), *argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = saved


def tau_run(sparsity: float) -> str:
    return "smat" if sparsity == MAIN_SPARSITY else f"smat-tau{sparsity:g}"


def experts_run(experts: int) -> str:
    return "smat" if experts == MAIN_EXPERTS else f"smat-m{experts}"


# The paper's gate settings (docs/smat.md, "The configuration" and "Optimisation"), which meta_tune.py's short-budget
# defaults replace (docs/smat.md).
PAPER_GATES = MetaRun(
    "smat-paper-gates",
    "the paper's gate settings: β_eval 1, gate lr 1e6, multiplier lr 0.002",
    model_config={"gate_beta_eval": 1.0},
    flags=("--gate_learning_rate", "1e6", "--multiplier_learning_rate", "0.002"),
)


class Study:
    """The stages of the study over one output folder: each stage's result is kept and reused on a rerun."""

    def __init__(self, args: StudyArguments):
        self.args = args
        self.root = Path(args.output_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.check_settings()
        self.timings_path = self.root / "timings.json"
        self.timings: dict[str, float] = (
            json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        )
        self.commands: list[str] = []
        self.cells: list[str] = []
        self.test = {domain: load_domain("minimeta", domain, "test") for domain in DOMAINS}
        self.validation = {domain: load_domain("minimeta", domain, "validation") for domain in TRAIN_DOMAINS}
        self.episodes = dict(protocol="md", max_ways=args.max_ways, max_support=args.max_support, image_size=32)

    # ----------------------------------------------------------------------------------------- bookkeeping
    def check_settings(self) -> None:
        """Refuse to resume a study that ran with other settings: its finished stages would be reused silently."""
        settings = {k: v for k, v in asdict(self.args).items() if k not in ("quick", "report_dir")}
        path = self.root / "settings.json"
        if path.exists():
            previous = json.loads(path.read_text())
            changed = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
            if changed:
                raise ValueError(
                    f"{self.root} holds a study run with other settings ({', '.join(changed)}); resume it with the "
                    "same flags, or give another --output_dir."
                )
        write_atomically(path, json.dumps(settings, indent=1) + "\n")

    def timed(self, name: str, run: Callable[[], object]) -> None:
        """Run a stage unless a previous run finished it; record its wall time."""
        if name in self.timings:
            return
        start = time.perf_counter()
        run()
        self.timings[name] = time.perf_counter() - start
        write_atomically(self.timings_path, json.dumps(self.timings, indent=1) + "\n")

    def backbone(self, name: str) -> Path:
        return self.root / "backbones" / name / "backbone"

    def meta_tuned(self, name: str) -> Path:
        return self.root / "meta" / name / "model"

    # ------------------------------------------------------------------------------------------- training
    def run_recipe(self, stage: str, recipe: str, argv: list[str]) -> None:
        """The stage `stage`: the command `python recipes/{recipe}.py argv` (listed in the report), run in this
        process as that command runs (the script as `__main__`; no recipe imports another), which saves the
        interpreter and library start-up of a subprocess per stage."""
        self.commands.append(f"python recipes/{recipe}.py " + " ".join(f"'{a}'" if "{" in a else a for a in argv))
        self.timed(stage, lambda: run_script(RECIPES / f"{recipe}.py", argv))

    def pretrain(self, name: str, argv: list[str]) -> None:
        argv = [*argv, "--output_dir", str(self.backbone(name).parent), "--seed", str(self.args.seed)]
        self.run_recipe(f"pretrain {name}", "pretrain", argv)

    def meta_tune(self, run: MetaRun) -> None:
        steps = max(1, (self.args.long_meta_tasks if run.long else self.args.meta_tasks) // 2)
        every = max(1, steps // 4)
        model_config = dict(run.model_config)
        if run.method == "smat":
            model_config = {**SMAT_DEMO, **model_config}
        argv = [
            "--method", run.method, "--backbone", str(self.backbone("sam")),
            "--output_dir", str(self.meta_tuned(run.name).parent), "--model_config", json.dumps(model_config),
            "--max_steps", str(steps), "--eval_steps", str(every), "--save_steps", str(every),
            "--logging_steps", str(every), "--eval_episodes", str(self.args.validation_episodes),
            "--test_episodes", "0", "--seed", str(self.args.seed), *run.flags,
        ]  # fmt: skip
        self.run_recipe(f"meta-tune {run.name}", "meta_tune", argv)

    def train_everything(self) -> None:
        epochs, rho = str(self.args.pretrain_epochs), str(SAM_RHO)
        self.pretrain("erm", ["--num_train_epochs", epochs, "--sam_rho", "0"])
        self.pretrain("sam", ["--num_train_epochs", epochs, "--sam_rho", rho])
        for domain in TRAIN_DOMAINS:
            self.pretrain(
                f"sam-{domain}",
                ["--backbone", str(self.backbone("sam")), "--domains", domain,
                 "--max_steps", str(self.args.domain_backbone_steps), "--sam_rho", rho],
            )  # fmt: skip
        for run in self.meta_runs():
            self.meta_tune(run)

    def meta_runs(self) -> list[MetaRun]:
        """Every meta-tuning run: the long main comparison, then the short-budget SMAT and its ablations."""
        args = self.args
        runs = [
            MetaRun("pmf-long", "P>M>F, the long budget", method="protonet", long=True),
            MetaRun("smat-long", "the long budget", long=True),
            MetaRun("pmf", "P>M>F", method="protonet"),
            MetaRun("smat", "—"),
        ]
        runs += [MetaRun(tau_run(t), f"τ {t:g}", model_config={"sparsity_target": t})
                 for t in args.sparsity_targets if t != MAIN_SPARSITY]  # fmt: skip
        runs += [MetaRun(experts_run(m), f"{m} experts", model_config={"num_experts": m})
                 for m in args.expert_counts if m != MAIN_EXPERTS]  # fmt: skip
        return runs + [
            MetaRun("smat-no-teachers", "no dense teachers (kd_weight 0)", model_config={"kd_weight": 0.0}),
            MetaRun("smat-no-split", 'no support/query split ("Meta ×")', model_config={"support_query_split": False}),
            MetaRun(
                "smat-fixed-masks",
                "masks not meta-learned: log α and λ frozen at their initialisation",
                flags=("--gate_learning_rate", "0", "--multiplier_learning_rate", "0"),
            ),
            PAPER_GATES,
        ]

    def smat_ablations(self) -> list[MetaRun]:
        """The short-budget SMAT runs, the reference first."""
        return [run for run in self.meta_runs() if run.method == "smat" and not run.long]

    # ----------------------------------------------------------------------------------------- evaluation
    def evaluate(self, name: str, load: Callable[[], torch.nn.Module], finetune: Mapping | None = None):
        """One cell of the results: a model on the test episodes of every domain (cached in results/). Domain by
        domain (the episodes of a domain depend only on the seed), so a pool's choices are counted per domain."""
        path = self.root / "results" / f"{name}.json"
        if not path.exists():
            start = time.perf_counter()
            model = load()
            episodes = self.args.finetune_episodes if finetune else self.args.test_episodes
            domains, choices = [], {}
            for domain, dataset in self.test.items():
                result = evaluate_episodes(
                    model, {domain: dataset}, episodes, in_domain=set(TRAIN_DOMAINS) & {domain},
                    seed=self.args.seed, finetune=finetune, **self.episodes,
                )  # fmt: skip
                domains += result.domains
                if isinstance(model, BackbonePool):
                    choices[domain] = dict(model.choices)
                    model.choices.clear()
            results = EvaluationResults(tuple(domains))
            record = {"results": results.to_json_dict(), "seconds": time.perf_counter() - start, "choices": choices}
            write_atomically(path, json.dumps(record) + "\n")
        return EvaluationResults.from_json_dict(self.cell_record(name)["results"])

    def finetune_learning_rate(self, mode: str) -> float:
        """The full fine-tuning lr of the grid that does best on validation episodes of the training domains,
        fine-tuning the SAM backbone (no test label is seen; the test-only domains have no validation split)."""
        path = self.root / "results" / f"finetune-lr-{mode}.json"
        if not path.exists():
            model = load_fewshot_model(str(self.backbone("sam")))
            scores = {}
            for rate in self.args.finetune_learning_rates:
                finetune = dict(mode=mode, learning_rate=rate, steps=self.args.finetune_steps)
                results = evaluate_episodes(
                    model, self.validation, self.args.validation_episodes, in_domain=TRAIN_DOMAINS,
                    seed=self.args.seed, finetune=finetune, **self.episodes,
                )  # fmt: skip
                scores[rate] = results.id_average
            write_atomically(path, json.dumps({str(rate): score for rate, score in scores.items()}) + "\n")
        scores = {float(rate): score for rate, score in json.loads(path.read_text()).items()}
        return max(scores, key=lambda rate: (scores[rate], -rate))

    def finetune(self, mode: str) -> dict:
        return dict(mode=mode, learning_rate=self.finetune_learning_rate(mode), steps=self.args.finetune_steps)

    def evaluate_everything(self) -> dict[str, EvaluationResults]:
        def fewshot(path: Path) -> Callable[[], torch.nn.Module]:
            return partial(load_fewshot_model, str(path))

        models = {
            "ERM backbone": fewshot(self.backbone("erm")),
            "SAM backbone": fewshot(self.backbone("sam")),
            **{cell: fewshot(self.meta_tuned(run)) for run, cell in MAIN_CELLS.items()},
            "selection (SAM pool)": self.backbone_pool,
        }
        results = {}
        self.timed("choose fine-tuning learning rates", lambda: [self.finetune(mode) for mode in ("full", "lora")])
        plan = [(name, load, None) for name, load in models.items()]
        plan += [(f"{name} + full FT", models[name], "full") for name in ("SAM backbone", "P>M>F", "SMAT")]
        plan += [("SMAT + lora FT", models["SMAT"], "lora")]
        plan += [(f"{name} + full FT", models[name], "full") for name in ("ERM backbone", "selection (SAM pool)")]
        plan += [(run.name, fewshot(self.meta_tuned(run.name)), None) for run in self.meta_runs() if not run.long]
        self.cells = [name for name, _, _ in plan]
        for name, load, mode in tqdm(plan, desc="evaluation cells"):
            results[name] = self.evaluate(name, load, self.finetune(mode) if mode else None)
        return results

    def cell_names(self) -> list[str]:
        """The evaluation cells of this study, in the order they ran."""
        return [name for name in self.cells if (self.root / "results" / f"{name}.json").exists()]

    def cell_record(self, name: str) -> dict:
        """What `evaluate` stored for a cell: results, wall time (seconds), the pool's choices."""
        return json.loads((self.root / "results" / f"{name}.json").read_text())

    def backbone_pool(self) -> BackbonePool:
        names = ["sam", *(f"sam-{domain}" for domain in TRAIN_DOMAINS)]
        return BackbonePool({name: load_fewshot_model(str(self.backbone(name))) for name in names})

    def routing_weights(self) -> dict[str, np.ndarray]:
        """The main SMAT's expert weights `[episodes, M]` on the test episodes of each domain (eval routing)."""
        path = self.root / "results" / "routing.json"
        if not path.exists():
            results = evaluate_episodes(
                load_fewshot_model(str(self.meta_tuned("smat-long"))), self.test, self.args.routing_episodes,
                protocol="md", image_size=32, seed=self.args.seed, max_ways=self.args.max_ways,
                max_support=self.args.max_support, progress=False,
            )  # fmt: skip
            weights = {domain: w.tolist() for domain, w in routing_weights(results).items()}
            write_atomically(path, json.dumps(weights) + "\n")
        return {domain: np.asarray(w) for domain, w in json.loads(path.read_text()).items()}

    def validation_curve(self, run: str) -> list[tuple[int, float]]:
        """`(tasks, validation accuracy)` of a meta-tuning run's evaluations."""
        return validation_curve(json.loads((self.meta_tuned(run).parent / "log_history.json").read_text()))


# ------------------------------------------------------------------------------------------------ the report
def claims(args: StudyArguments) -> list[Claim]:
    """The papers' claims as comparisons of two cells: (claim, ours, theirs, split, expected)."""
    taus, long, short = sorted(args.sparsity_targets), args.long_meta_tasks, args.meta_tasks
    sparse, dense = tau_run(taus[-1]), tau_run(taus[0])
    return [Claim(*claim) for claim in [
        (f"SMAT ≥ P>M>F in-domain, {long} tasks", "SMAT", "P>M>F", "ID", "not worse"),
        (f"SMAT > P>M>F out of domain, {long} tasks", "SMAT", "P>M>F", "OOD", "better"),
        ("SMAT + full FT > P>M>F + full FT out of domain", "SMAT + full FT", "P>M>F + full FT", "OOD", "better"),
        ("SAM backbone > ERM backbone on unseen domains", "SAM backbone", "ERM backbone", "OOD", "better"),
        ("… both fine-tuned (the flatness paper's setting)", "SAM backbone + full FT", "ERM backbone + full FT",
         "OOD", "better"),
        ("fine-tuning adds out of domain: SMAT + full FT > SMAT", "SMAT + full FT", "SMAT", "OOD", "better"),
        ("… SMAT + LoRA FT > SMAT", "SMAT + lora FT", "SMAT", "OOD", "better"),
        ("… P>M>F + full FT > P>M>F", "P>M>F + full FT", "P>M>F", "OOD", "better"),
        ("… SAM backbone + full FT > SAM backbone", "SAM backbone + full FT", "SAM backbone", "OOD", "better"),
        ("selection + FT > SAM backbone + FT", "selection (SAM pool) + full FT", "SAM backbone + full FT", "OOD",
         "better"),
        (f"SMAT ≥ P>M>F in-domain, {short} tasks", "smat", "pmf", "ID", "not worse"),
        (f"SMAT > P>M>F out of domain, {short} tasks", "smat", "pmf", "OOD", "better"),
        (f"τ trades ID for OOD: τ {taus[-1]:g} < τ {taus[0]:g} in-domain", sparse, dense, "ID", "worse"),
        (f"… and τ {taus[-1]:g} > τ {taus[0]:g} out of domain", sparse, dense, "OOD", "better"),
        ("dense teachers help at equal tasks", "smat", "smat-no-teachers", "ID", "better"),
        ("… out of domain", "smat", "smat-no-teachers", "OOD", "better"),
        ("the support/query split helps (Meta ✓ > Meta ×)", "smat", "smat-no-split", "ID", "better"),
        ("… out of domain", "smat", "smat-no-split", "OOD", "better"),
        ("meta-learned masks help (> fixed random masks)", "smat", "smat-fixed-masks", "ID", "better"),
        ("… out of domain", "smat", "smat-fixed-masks", "OOD", "better"),
    ]]  # fmt: skip


FLATNESS_CELLS = ("ERM backbone", "SAM backbone", "ERM backbone + full FT", "SAM backbone + full FT",
                  "selection (SAM pool)", "selection (SAM pool) + full FT")  # fmt: skip


def draw_plots(study: Study, results: Mapping[str, EvaluationResults], smat, report: Path) -> list[Path]:
    """The report's PNGs, next to its README.md."""
    accuracy = {name: results[name] for name in ("SAM backbone", "P>M>F", "SMAT", "SMAT + full FT")}
    flatness = {name: results[name] for name in FLATNESS_CELLS if name != "selection (SAM pool)"}  # FT rows only
    curves = {"SMAT": study.validation_curve("smat"),
              "SMAT without dense teachers": study.validation_curve("smat-no-teachers")}  # fmt: skip
    return [
        plot_domain_accuracy(accuracy, report / "accuracy.png"),
        plot_domain_accuracy(flatness, report / "flatness.png"),
        plot_sparsity_tradeoff(
            {tau: results[tau_run(tau)] for tau in study.args.sparsity_targets}, report / "sparsity_tradeoff.png"
        ),
        plot_expert_density(smat, report / "expert_density.png"),
        plot_expert_overlap(smat, report / "expert_overlap.png"),
        plot_routing_similarity(study.routing_weights(), report / "routing_similarity.png"),
        plot_validation_curves(curves, report / "dense_teachers.png"),
    ]


def meta_tuning_runs(study: Study, results: Mapping[str, EvaluationResults]) -> list[MetaTuningRun]:
    """Every meta-tuning run with its test results, wall time and (SMAT) model and best validation accuracy."""
    runs = []
    for run in study.meta_runs():
        smat = run.method == "smat"
        runs.append(MetaTuningRun(
            run.name, run.differs, run.method, study.args.long_meta_tasks if run.long else study.args.meta_tasks,
            study.timings[f"meta-tune {run.name}"], results[MAIN_CELLS.get(run.name, run.name)],
            best_validation=max(a for _, a in study.validation_curve(run.name)) if smat else None,
            model=load_fewshot_model(str(study.meta_tuned(run.name))) if smat else None,
        ))  # fmt: skip
    return runs


def study_record(study: Study, results: Mapping[str, EvaluationResults], smat) -> MiniMetaStudy:
    """What the study measured, for `hf_fewshot.reports.render_minimeta_report`."""
    args = study.args
    timings = [*study.timings.items()]
    timings += [(f"evaluate {name}", study.cell_record(name)["seconds"]) for name in study.cell_names()]
    return MiniMetaStudy(
        command="python recipes/reproduce_minimeta.py" + (" --quick" if args.quick else ""),
        settings=asdict(args),
        results=results,
        claims=claims(args),
        main_cells=[name for name in results if name.split(" + ")[0] in ("SAM backbone", "P>M>F", "SMAT")],
        flatness_cells=FLATNESS_CELLS,
        selection_choices=study.cell_record("selection (SAM pool)")["choices"],
        runs=meta_tuning_runs(study, results),
        smat=smat,
        routing=study.routing_weights(),
        learning_rates={mode: study.finetune_learning_rate(mode) for mode in ("full", "lora")},
        commands=study.commands,
        timings=timings,
        train_domains=TRAIN_DOMAINS,
        ood_domains=OOD_DOMAINS,
        backbone=TINY_VIT_CONFIG,
        main_experts=MAIN_EXPERTS,
        main_sparsity=MAIN_SPARSITY,
        sam_rho=SAM_RHO,
    )


def write_report(study: Study, results: Mapping[str, EvaluationResults]) -> Path:
    """The plots and `{report_dir}/README.md`; returns the README's path."""
    report = Path(study.args.report_dir)
    report.mkdir(parents=True, exist_ok=True)
    smat = load_fewshot_model(str(study.meta_tuned("smat-long")))
    plots = draw_plots(study, results, smat, report)
    path = report / "README.md"
    write_atomically(path, render_minimeta_report(study_record(study, results, smat)))
    assert all(plot.exists() for plot in plots)
    return path


def parse_arguments(argv: list[str] | None = None) -> StudyArguments:
    """The full preset, or the quick one with `--quick`; other flags override the preset's values."""
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = parse_recipe_arguments((StudyArguments,), QUICK if "--quick" in argv else FULL, argv)
    return args


def main(argv: list[str] | None = None) -> Path:
    """Run (or resume) every stage and write the report; returns the report's path."""
    study = Study(parse_arguments(argv))
    study.train_everything()
    results = study.evaluate_everything()
    study.timed("routing analysis", study.routing_weights)
    report = write_report(study, results)
    print(f"Report: {report}")
    return report


if __name__ == "__main__":
    main()
