"""Convert the official Meta-Dataset release (per-domain TFRecords + dataset_spec.json) into `datasets` parquet
files, one config per domain, with a dataset card; optionally push it to the Hub.

    hf-fewshot convert --records_root /data/records --output_dir data/metadataset
    hf-fewshot convert --records_root /data/records --domains omniglot aircraft \
        --image_folders_root /data/extra        # also mnist / cifar10 / cifar100 from {root}/{name}/test/{class}/
    hf-fewshot convert ... --hub_repo_id me/meta-dataset

Rerunning resumes: finished splits are kept. Corrupt records are listed at the end (file, byte offset, reason).
"""

from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from tqdm.auto import tqdm

from hf_fewshot import load_domain
from hf_fewshot.data.conversion import convert_domain, dataset_card, write_split
from hf_fewshot.training.cli import parse_recipe_arguments

EXTRA_DOMAINS = ("mnist", "cifar10", "cifar100")


@dataclass
class ConvertArguments:
    records_root: str = field(
        metadata={"help": "Folder with one sub-folder of records + dataset_spec.json per domain."}
    )
    output_dir: str = field(default="data/metadataset", metadata={"help": "Where {domain}/{split}.parquet go."})
    domains: list[str] | None = field(default=None, metadata={"help": "Default: every domain found under the root."})
    image_folders_root: str | None = field(
        default=None, metadata={"help": "Test-only extras as {root}/{mnist,cifar10,cifar100}/test/{class}/*.png."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the within-class shuffle."})
    hub_repo_id: str | None = field(default=None, metadata={"help": "Push the converted folder as a dataset repo."})


def run(args: ConvertArguments) -> Path:
    root, output = Path(args.records_root), Path(args.output_dir)
    domains = args.domains or sorted(p.parent.name for p in root.glob("*/dataset_spec.json"))
    if not domains:
        raise FileNotFoundError(f"No */dataset_spec.json under {root}: give the folder holding the domain folders.")
    corrupt = []
    for domain in tqdm(domains, desc="domains"):
        corrupt += convert_domain(root / domain, output, seed=args.seed)[1]
    if args.image_folders_root:
        for domain in EXTRA_DOMAINS:
            target = output / domain / "test.parquet"
            if (Path(args.image_folders_root) / domain).is_dir() and not target.exists():
                write_split(load_domain(args.image_folders_root, domain, "test"), target)
    card = dataset_card(output)
    print(
        f"Converted {len(domains)} domain(s) into {output} (card: {card}); {len(corrupt)} corrupt record(s) skipped."
    )
    for record in corrupt:
        print(f"  corrupt: {record}")
    if args.hub_repo_id:
        api = HfApi()
        api.create_repo(args.hub_repo_id, repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=str(output), repo_id=args.hub_repo_id, repo_type="dataset")
        print(f"Pushed to {args.hub_repo_id}")
    return output


def main(argv: list[str] | None = None, prog: str = "hf-fewshot convert") -> Path:
    (args,) = parse_recipe_arguments((ConvertArguments,), {}, argv, prog=prog)
    return run(args)
