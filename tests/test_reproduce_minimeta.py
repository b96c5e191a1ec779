"""The MiniMeta study end to end on a minimal budget: every stage, the report with its verdicts and plots, resume."""

import ast
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

import reproduce_minimeta  # noqa: E402

PLOTS = (
    "accuracy.png",
    "flatness.png",
    "sparsity_tradeoff.png",
    "expert_density.png",
    "expert_overlap.png",
    "routing_similarity.png",
    "dense_teachers.png",
)


def minimal_argv(root: Path) -> list[str]:
    return [
        "--quick", "--output_dir", str(root / "runs"), "--report_dir", str(root / "report"),
        "--pretrain_epochs", "0.01", "--domain_backbone_steps", "2", "--meta_tasks", "4", "--long_meta_tasks", "6",
        "--validation_episodes", "2", "--test_episodes", "4", "--finetune_episodes", "2", "--finetune_steps", "1",
        "--finetune_learning_rates", "1e-4", "1e-3", "--routing_episodes", "2",
        "--sparsity_targets", "0.5", "0.75", "--expert_counts", "2", "4",
    ]  # fmt: skip


@pytest.mark.slow
def test_the_quick_preset_runs_every_stage_and_writes_the_report_and_plots(tmp_path):
    report = reproduce_minimeta.main(minimal_argv(tmp_path))
    assert report == tmp_path / "report" / "README.md"
    text = report.read_text()
    for heading in ("## Claims", "## Table 1", "## Flat backbones", "## SMAT ablations and diagnostics",
                    "## SMAT's experts", "## Commands, seeds and wall times"):  # fmt: skip
        assert heading in text
    for claim in ("SMAT ≥ P>M>F in-domain", "SAM backbone > ERM backbone on unseen domains",
                  "fine-tuning adds out of domain", "τ trades ID for OOD", "dense teachers", "Meta ✓ > Meta ×",
                  "meta-learned masks help", "SMAT > P>M>F out of domain, 4 tasks"):  # fmt: skip
        row = next(line for line in text.splitlines() if claim in line)
        assert "reproduced**" in row, f"every claim gets a verdict: {row}"
    for plot in PLOTS:
        assert f"]({plot})" in text
        with Image.open(tmp_path / "report" / plot) as image:
            assert image.format == "PNG"
    assert "python recipes/pretrain.py --num_train_epochs 0.01 --sam_rho 0 " in text
    assert "python recipes/meta_tune.py --method protonet" in text and '\'{"num_experts": 2,' in text
    for model in ("ERM backbone", "selection (SAM pool) + full FT", "SMAT + lora FT", "smat-tau0.75", "smat-m2",
                  "smat-no-split", "smat-fixed-masks", "smat-paper-gates", "pmf-long"):  # fmt: skip
        assert f"| {model} |" in text
    results = tmp_path / "runs" / "results"
    smat = json.loads((results / "SMAT.json").read_text())["results"]["domains"]
    finetuned = json.loads((results / "SMAT + full FT.json").read_text())["results"]["domains"]
    assert [d["num_episodes"] for d in smat] == [4] * 4 and [d["num_episodes"] for d in finetuned] == [2] * 4
    choices = json.loads((results / "selection (SAM pool).json").read_text())["choices"]
    assert set(choices) == {"glyphs", "emoji", "clipart", "digits"}
    assert all(sum(counts.values()) == 4 for counts in choices.values())

    # A rerun finds every stage done: nothing is trained or evaluated again, the report comes out the same.
    timings = (tmp_path / "runs" / "timings.json").read_text()
    cells = {path: path.stat().st_mtime_ns for path in results.glob("*.json")}
    assert reproduce_minimeta.main(minimal_argv(tmp_path)).read_text() == text
    assert (tmp_path / "runs" / "timings.json").read_text() == timings
    assert {path: path.stat().st_mtime_ns for path in results.glob("*.json")} == cells


def test_presets_and_their_overrides():
    full = reproduce_minimeta.parse_arguments([])
    quick = reproduce_minimeta.parse_arguments(["--quick"])
    assert (full.test_episodes, quick.test_episodes) == (600, reproduce_minimeta.QUICK["test_episodes"])
    assert reproduce_minimeta.parse_arguments(["--quick", "--test_episodes", "7"]).test_episodes == 7
    with pytest.raises(ValueError, match="must include 0.5"):
        reproduce_minimeta.parse_arguments(["--sparsity_targets", "0.25", "0.75"])


def test_resuming_with_other_settings_is_refused(tmp_path):
    study = reproduce_minimeta.Study(reproduce_minimeta.parse_arguments(minimal_argv(tmp_path)))
    assert (study.root / "settings.json").exists()
    changed = reproduce_minimeta.parse_arguments([*minimal_argv(tmp_path), "--meta_tasks", "6"])
    with pytest.raises(ValueError, match=r"other settings \(meta_tasks\)"):
        reproduce_minimeta.Study(changed)


def test_recipes_import_no_recipe_and_keep_functions_short():
    """Each recipe parses its arguments, calls the library and prints: no recipe imports another (the study runs
    them as commands), and no function in recipes/ is over 40 lines."""
    recipes = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.py"))
    names = {path.stem for path in recipes}
    for path in recipes:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                assert not {alias.name.split(".")[0] for alias in node.names} & names, f"{path.name} imports a recipe"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in names, f"{path.name} imports a recipe"
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
                assert node.end_lineno - start + 1 <= 40, f"{path.name}: {node.name} is over 40 lines"
