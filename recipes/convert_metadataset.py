"""Convert the official Meta-Dataset release (per-domain TFRecords + dataset_spec.json) into `datasets` parquet
files, one config per domain, with a dataset card; optionally push it to the Hub.

    python recipes/convert_metadataset.py --records_root /data/records --output_dir data/metadataset
    python recipes/convert_metadataset.py --records_root /data/records --domains omniglot aircraft \
        --image_folders_root /data/extra        # also mnist / cifar10 / cifar100 from {root}/{name}/test/{class}/
    python recipes/convert_metadataset.py ... --hub_repo_id me/meta-dataset

Rerunning resumes: finished splits are kept. Corrupt records are listed at the end (file, byte offset, reason).

The same as the command `hf-fewshot convert` (`hf_fewshot/commands/convert_metadataset.py`), as a script.
"""

from hf_fewshot.commands.convert_metadataset import *  # noqa: F403  (the names the recipe always had)
from hf_fewshot.commands.convert_metadataset import main

if __name__ == "__main__":
    main(prog="recipes/convert_metadataset.py")
