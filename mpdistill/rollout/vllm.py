"""Generation on a vLLM engine (GPU), for evaluations too large for ``transformers.generate``.

vLLM is optional: it is imported only when this backend is chosen, and its absence is reported
before any model is loaded. Each request carries its own seed, so a sample's text does not depend
on which other requests shared its batch.
"""

from __future__ import annotations

import importlib.util

from .hf import Generation, GenerationSettings


class BackendUnavailable(RuntimeError):
    """The requested generation backend cannot run here; the message says how to fix it."""


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise BackendUnavailable(
            "the vllm backend needs the vllm package (GPU machines: pip install vllm); "
            "use --backend transformers to run without it"
        )


class VLLMGenerator:
    """A vLLM ``LLM`` over token-id prompts, returning the same :class:`Generation` records as the HF path."""

    def __init__(self, model: str, *, seed: int, tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, dtype: str = "auto") -> None:
        require_vllm()
        from vllm import LLM

        self.llm = LLM(
            model=model,
            seed=seed,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[list[int]], settings: GenerationSettings, seeds: list[int]) -> list[Generation]:
        from vllm import SamplingParams

        greedy = settings.temperature <= 0
        params = [
            SamplingParams(
                n=1,
                temperature=0.0 if greedy else settings.temperature,
                top_p=1.0 if greedy else settings.top_p,
                top_k=-1 if greedy or settings.top_k <= 0 else settings.top_k,  # -1: no top-k (all versions)
                max_tokens=settings.max_new_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        # vLLM keeps the stop token in token_ids; the HF path counts tokens without it.
        special = set(self.tokenizer.all_special_ids)
        gens = []
        for out in outputs:
            done = out.outputs[0]
            ids = list(done.token_ids)
            if done.finish_reason == "stop" and ids and ids[-1] in special:
                ids.pop()
            gens.append(Generation(text=done.text, token_ids=ids, truncated=done.finish_reason == "length"))
        return gens
