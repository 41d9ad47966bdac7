"""Generation backends. ``generate_texts`` is the one entry point the pipeline uses."""

from .hf import GenerationSettings, derive_seed, generate_texts

__all__ = ["GenerationSettings", "derive_seed", "generate_texts"]
