"""How long `import hf_fewshot` takes, against the dependencies it cannot avoid.

    python bench/imports.py [--repeats 7]

Each statement runs in a fresh interpreter (`python -c`), alternating, so machine noise hits every row alike.
The floor is torch + transformers' `PreTrainedModel` + datasets: the models are `PreTrainedModel` subclasses
registered with `AutoModel` on import. Prints a Markdown table of medians and min–max.
"""

import argparse
import statistics
import subprocess
import sys
import time

FLOOR = "floor: torch, transformers.PreTrainedModel, datasets"
STATEMENTS = {
    "python": "pass",
    "torch": "import torch",
    FLOOR: "import torch, datasets; from transformers import PreTrainedModel",
    "hf_fewshot": "import hf_fewshot",
    "hf_fewshot + its training classes": "import hf_fewshot; hf_fewshot.EpisodicTrainer",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    seconds = {name: [] for name in STATEMENTS}
    for _ in range(args.repeats):
        for name, statement in STATEMENTS.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", statement], check=True)
            seconds[name].append(time.perf_counter() - start)
    floor = statistics.median(seconds[FLOOR])
    print("| import | median (s) | min–max (s) | vs floor |\n|---|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f}–{max(values):.2f} | {median / floor:.2f}× |")


if __name__ == "__main__":
    main()
