"""The `episodic_accuracy` metric: `episodic_accuracy.py` is the `evaluate` script (load the folder with
`evaluate.load`), `interval.py` the pure-NumPy formula it shares with `hf_fewshot.evaluation.mean_and_ci95`."""
