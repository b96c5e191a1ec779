"""`evaluate` metric modules shipped with hf_fewshot (load them with `evaluate.load(path)`; see docs/evaluation.md).

Nothing here imports `evaluate`: the metric scripts are loaded by `evaluate.load`, not imported by the package.
"""
