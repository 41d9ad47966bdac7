"""Step 2 of the pipeline, rollouts: generation with ``transformers`` or a vLLM engine. In training the
student samples through TRL's own generation; ``generate_texts`` serves everything else (the
teacher's rewrites and samples, evaluation)."""

from mpdistill.rollout.hf import GenerationSettings, derive_seed, generate_texts, pad_generate_calls

__all__ = ["GenerationSettings", "derive_seed", "generate_texts", "pad_generate_calls"]
