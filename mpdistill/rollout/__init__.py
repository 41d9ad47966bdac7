"""Generation backends. ``generate_texts`` is the one entry point the pipeline uses."""

from mpdistill.rollout.hf import GenerationSettings, derive_seed, generate_texts, pad_generate_calls

__all__ = ["GenerationSettings", "derive_seed", "generate_texts", "pad_generate_calls"]
