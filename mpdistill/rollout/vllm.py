"""Generation on a vLLM engine (GPU): evaluations and rewrites too large for ``transformers.generate``.

vLLM is optional: it is imported only when this backend is chosen, and its absence is reported
before any model is loaded. Each request carries its own seed, so a sample's text does not depend
on which other requests shared its batch.
"""

from __future__ import annotations

import importlib.util
import urllib.error
import urllib.request

from .hf import Generation, GenerationSettings


class BackendUnavailable(RuntimeError):
    """The requested generation backend cannot run here; the message says how to fix it."""


def require_vllm(without: str = "use --backend transformers to run without it") -> None:
    if importlib.util.find_spec("vllm") is None:
        raise BackendUnavailable(f"the vllm backend needs the vllm package (GPU machines: pip install vllm); {without}")


def check_gpus(key: str, tensor_parallel_size: int, *, processes: int = 1, without: str | None = None) -> None:
    """vLLM is installed and there are GPUs for ``tensor_parallel_size`` (one line saying what to fix)."""
    require_vllm(*([without] if without else []))
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0:
        raise BackendUnavailable(f"{key}: vLLM needs a CUDA GPU and none is visible here")
    if tensor_parallel_size > visible:
        raise BackendUnavailable(
            f"{key} is {tensor_parallel_size} but only {visible} GPU(s) are visible; lower it to at most {visible} "
            "(or check CUDA_VISIBLE_DEVICES)"
        )
    if processes % tensor_parallel_size:
        raise BackendUnavailable(
            f"{key} is {tensor_parallel_size}, which does not divide the {processes} training processes; "
            "use a divisor of the process count"
        )


def check_server(key: str, base_url: str, timeout_s: float = 10.0) -> None:
    """A ``trl vllm-serve`` server answers its health check (one line saying what to fix)."""
    url = f"{base_url.rstrip('/')}/health"  # the route TRL's own client polls
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.HTTPError as err:
        err.close()
        raise BackendUnavailable(f"{key} {base_url!r}: GET {url} gave HTTP {err.code}; is it a `trl vllm-serve` server?") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise BackendUnavailable(
            f"{key} {base_url!r}: cannot reach the vLLM server ({reason}); start it on the rollout GPUs with "
            "`trl vllm-serve --model STUDENT` or fix the URL"
        ) from None


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

    def generate(self, prompts: list[list[int]], settings: GenerationSettings, seeds: list[int],
                 max_new_tokens: list[int] | None = None) -> list[Generation]:
        """One sample per prompt; ``max_new_tokens`` (one per prompt) overrides ``settings.max_new_tokens``."""
        from vllm import SamplingParams

        budgets = max_new_tokens if max_new_tokens is not None else [settings.max_new_tokens] * len(prompts)
        if len(budgets) != len(prompts) or len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts, {len(seeds)} seeds, {len(budgets)} budgets")
        greedy = settings.temperature <= 0
        params = [
            SamplingParams(
                n=1,
                temperature=0.0 if greedy else settings.temperature,
                top_p=1.0 if greedy else settings.top_p,
                top_k=-1 if greedy or settings.top_k <= 0 else settings.top_k,  # -1: no top-k (all versions)
                max_tokens=max(1, budget),
                seed=seed,
            )
            for seed, budget in zip(seeds, budgets)
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
