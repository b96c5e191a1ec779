"""Freeze the test episodes of a converted dataset: the row indices of N episodes per domain and protocol, in small
JSON files that ship with the dataset so that every user scores identical tasks.

    hf-fewshot freeze-episodes --data_source data/metadataset --num_episodes 600
    hf-fewshot freeze-episodes --data_source minimeta --output_dir runs/frozen --protocols md fixed

Writes `{output_dir}/{domain}/{split}-{protocol}.episodes.json`; `evaluate_episodes(..., frozen=...)` and
`FrozenEpisodes.load(path)` read them back.
"""

from dataclasses import dataclass, field
from pathlib import Path

from hf_fewshot import EpisodeSampler, load_domain
from hf_fewshot.data.episodes import FrozenEpisodes
from hf_fewshot.data.metadataset import MD_EVAL_DOMAINS
from hf_fewshot.data.minimeta import DOMAINS
from hf_fewshot.training.cli import parse_recipe_arguments


@dataclass
class FreezeArguments:
    data_source: str = field(default="minimeta", metadata={"help": "'minimeta', a converted folder or a Hub id."})
    domains: list[str] | None = field(default=None, metadata={"help": "Default: every domain of the source."})
    split: str = "test"
    protocols: list[str] = field(default_factory=lambda: ["md"], metadata={"help": "md, fixed, md_5shot."})
    n_way: int = 5
    n_shot: int = 5
    n_query: int = 15
    num_episodes: int = 600
    seed: int = 0
    output_dir: str | None = field(default=None, metadata={"help": "Default: the data_source folder itself."})


def run(args: FreezeArguments) -> list[Path]:
    domains = args.domains or list(DOMAINS if args.data_source == "minimeta" else MD_EVAL_DOMAINS)
    output = Path(args.output_dir or args.data_source)
    written = []
    for domain in domains:
        split = load_domain(args.data_source, domain, args.split)
        for protocol in args.protocols:
            shape = dict(n_way=args.n_way, n_shot=args.n_shot, n_query=args.n_query) if protocol == "fixed" else {}
            sampler = EpisodeSampler.from_dataset(split, protocol=protocol, seed=args.seed, **shape)
            frozen = FrozenEpisodes.from_sampler(sampler, args.num_episodes, split=args.split, rows=len(split))
            written.append(frozen.save(output / domain / f"{args.split}-{protocol}.episodes.json"))
            print(f"{domain}/{args.split} {protocol}: {args.num_episodes} episodes → {written[-1]}")
    return written


def main(argv: list[str] | None = None, prog: str = "hf-fewshot freeze-episodes") -> list[Path]:
    (args,) = parse_recipe_arguments((FreezeArguments,), {}, argv, prog=prog)
    return run(args)
