"""`python -m hf_fewshot.data.minimeta --output DIR [--seed N]`: build MiniMeta (by default into `PREBUILT_DIR`)."""

from hf_fewshot.data.minimeta.build import main

if __name__ == "__main__":
    main()
