"""Freed CPU memory is kept for reuse when training on CPU (hf_fewshot.allocator; docs/performance.md)."""

import platform
import subprocess
import sys
import textwrap

import pytest

# Counts the page faults of allocating and freeing two 64 MiB tensors, over glibc's largest adaptive mmap threshold
# (32 MiB): by default each is mapped afresh and faulted in page by page; kept for reuse, the next ones are not.
PROBE = textwrap.dedent(
    """
    import resource, sys, tempfile, torch
    from hf_fewshot import FewShotTrainingArguments, SAMTrainer

    args = FewShotTrainingArguments(
        tempfile.mkdtemp(), report_to=[], use_cpu=True, reuse_freed_cpu_memory=sys.argv[1] == "reuse"
    )
    SAMTrainer(model=torch.nn.Linear(2, 2), args=args)

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def allocate_and_free():
        return [torch.ones(16 << 20) for _ in range(2)]

    allocate_and_free()
    before = faults()
    for _ in range(3):
        allocate_and_free()
    print((faults() - before) / 3)
    """
)


def page_faults_per_cycle(setting: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, setting], capture_output=True, text=True, timeout=300, check=True
    )
    return float(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_cpu_trainer_keeps_freed_memory_for_the_next_allocations_unless_told_not_to():
    kept, returned = page_faults_per_cycle("reuse"), page_faults_per_cycle("no")
    pages = 2 * (64 << 20) // 4096
    assert returned > 0.8 * pages, "with glibc's defaults every 64 MiB block is faulted in afresh"
    assert kept < returned / 2


def test_reusing_freed_memory_is_not_a_setting_that_makes_a_finished_run_train_again(tmp_path):
    from hf_fewshot import FewShotTrainingArguments

    settings = [
        FewShotTrainingArguments(tmp_path, report_to=[], reuse_freed_cpu_memory=reuse).run_settings()
        for reuse in (True, False)
    ]
    assert settings[0] == settings[1]
    assert settings[0]["sam_rho"] == 0.0, "the settings that change the weights are still compared"
