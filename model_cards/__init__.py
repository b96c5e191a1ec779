"""Jinja templates of the Hub model cards (installed as `hf_fewshot.model_cards`, rendered by `hf_fewshot.hub`)."""
