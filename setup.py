"""Packaging for hf-fewshot: few-shot image classification (SMAT, P>M>F, flat backbones) on the HF stack."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="hf-fewshot",
    version="0.1.0.dev0",
    description="Few-shot image classification on the Hugging Face stack: SMAT, P>M>F and SAM-trained flat backbones.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[*find_packages(include=["hf_fewshot", "hf_fewshot.*"]), "hf_fewshot.model_cards"],
    # The card templates live in the top-level model_cards/ folder and install as hf_fewshot.model_cards.
    package_dir={"hf_fewshot.model_cards": "model_cards"},
    # The evaluate metric is loaded from its folder (`evaluate.load(hf_fewshot.evaluation.EPISODIC_ACCURACY)`): its
    # script, the interval.py it imports, and its metric card.
    package_data={
        "hf_fewshot.data": ["minimeta_data/*", "minimeta_data/*/*"],
        "hf_fewshot.model_cards": ["*.md"],
        "hf_fewshot.metrics.episodic_accuracy": ["*.py", "README.md"],
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "datasets>=3.0",
        "accelerate>=1.0",
        "peft>=0.14",
        "evaluate>=0.4",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "numpy>=1.26",
        "pyarrow>=15",
        "pillow>=10.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pyyaml>=6.0",
        "jinja2>=3.0",  # the card and report templates
    ],
    entry_points={"console_scripts": ["hf-fewshot = hf_fewshot.commands:console_main"]},
    extras_require={
        # Rebuilding MiniMeta from its source packages (the prebuilt copy ships with the package).
        "minimeta": ["fonttools>=4.40", "scikit-learn>=1.3"],
        # Converting the official Meta-Dataset TFRecords (CRC-32C checksums of every record).
        "metadataset": ["google-crc32c>=1.5"],
        # The browser demo (`python demo/app.py`).
        "demo": ["gradio>=5"],
        "dev": [
            "pytest>=8.0",
            "ruff>=0.6",
            "tensorboard>=2.10",
            "fonttools>=4.40",
            "scikit-learn>=1.3",
            "google-crc32c>=1.5",
            "gradio>=5",  # the demo and its browser test (with Debian's chromium and chromium-driver)
            "selenium>=4.11",  # drives the system chromedriver given to it: nothing is downloaded
        ],
    },
)
