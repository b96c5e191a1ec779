"""The `hf-fewshot` console script, as installed, run from a folder outside the repository."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("hf-fewshot")
QUICK = ["--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--dataloader_pin_memory", "false"]


def hf_fewshot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_user_errors_are_one_line_and_exit_status_2(tmp_path):
    assert SCRIPT.is_file(), "pip install -e . installs the console script"
    listing = hf_fewshot("--help", cwd=tmp_path)
    assert listing.returncode == 0 and "meta-tune" in listing.stdout and "freeze-episodes" in listing.stdout
    assert hf_fewshot(cwd=tmp_path).returncode == 2
    missing = hf_fewshot("adapt", "--images", "photos", cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "No model at runs/minimeta-smat/model" in missing.stderr and "hf-fewshot meta-tune" in missing.stderr
    typo = hf_fewshot("meta-tune", "--sam_rho", "true", cwd=tmp_path)
    assert typo.returncode == 2 and typo.stderr.count("\n") == 1 and "invalid float value" in typo.stderr
    unknown = hf_fewshot("meta-tuning", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown command 'meta-tuning'" in unknown.stderr


@pytest.mark.slow
def test_the_commands_train_and_evaluate_from_any_folder(tmp_path):
    pretrain = hf_fewshot("pretrain", "--output_dir", "pt", "--max_steps", "1", "--per_device_train_batch_size", "8",
                          *QUICK, cwd=tmp_path)  # fmt: skip
    assert pretrain.returncode == 0, pretrain.stderr
    assert (tmp_path / "pt" / "backbone" / "preprocessor_config.json").is_file()
    evaluate = hf_fewshot("evaluate", "--models", "pt/backbone", "--domains", "digits", "--num_episodes", "2",
                          "--max_ways", "5", "--output", "table.md", cwd=tmp_path)  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr
    assert "| digits | OOD |" in (tmp_path / "table.md").read_text()
