"""Generation backends. ``generate_texts`` is the one entry point the pipeline uses."""

from .hf import GenerationSettings, generate_texts

__all__ = ["GenerationSettings", "generate_texts"]
