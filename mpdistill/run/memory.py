"""Per-device memory of a training run, estimated from the models' configs at the recipe's shapes.

What the dry run prints before any weight loads. Every term is arithmetic on a config and the
recipe, and the terms that can be measured on a CPU are held to the tensors a real run allocates
(``tests/test_memory.py``): weights, gradients and AdamW states by parameter count, the KV caches by
``transformers``' own cache at the batch and length given. The shapes are the ones TRL and the
rewriter really use:

* TRL samples a device's whole optimizer step at once: ``batch_size × gradient_accumulation_steps``
  sequences of prompt + ``max_completion_length`` tokens share one KV cache;
* the local rewriter writes ``rewrite.batch_size`` rewrites at a time (at most the step's samples),
  each reading a prompt that holds the trace, then writing up to ``rewrite.max_new_tokens``;
* an off-policy teacher samples the step's completions the way the student does.

Not included: the loss's logit chunks, one layer's recomputed activations under gradient
checkpointing, the CUDA context and allocator slack (a few GB together on a large GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
# Tokens the rewrite instruction adds to the problem and the trace (the built-in prompts: 102 and 115
# with Qwen3's chat template; tests/test_memory.py holds the allowance above them).
REWRITE_INSTRUCTION_TOKENS = 200
# Prompt tokens assumed where the training prompts cannot be measured here (a Hub dataset offline).
ASSUMED_PROMPT_TOKENS = 256


@dataclass
class Part:
    """One term of the estimate: ``static`` parts are held the whole run; the others are held in
    their phase (sampling, rewriting, the backward pass), of which only the largest counts at once."""

    name: str
    arithmetic: str
    bytes: int
    static: bool
    shardable: bool = False  # divided over the processes by ZeRO-3 / FSDP


def size(n_bytes: float) -> str:
    """Bytes as GB, or MB below one GB."""
    return f"{n_bytes / GB:.1f} GB" if n_bytes >= GB else f"{n_bytes / 1e6:.1f} MB"


def count(n: int) -> str:
    """A parameter count in billions, or millions below one billion."""
    return f"{n / 1e9:.3g} B" if n >= 1e9 else f"{n / 1e6:.3g} M"


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Bytes of K and V one token keeps in every layer's cache."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers * 2 * kv_heads * head_dim * dtype_bytes


def _meta_model(config):
    """The causal LM ``config`` describes, on the meta device: shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def parameter_count(config) -> int:
    """Parameters of a causal LM built from ``config`` (tied weights once), without allocating it."""
    return sum(p.numel() for p in _meta_model(config).parameters())


def lora_parameter_count(config, r: int, target_modules: list[str]) -> int:
    """Adapter parameters LoRA adds: ``r × (in + out)`` for every targeted linear layer."""
    import torch

    return sum(r * (module.in_features + module.out_features) for name, module in _meta_model(config).named_modules()
               if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in target_modules)


def estimate(recipe, student_config, teacher_config, *, prompt_tokens: int, rewrites: bool, teacher_samples: bool,
             student_parameters: int | None = None, teacher_parameters: int | None = None) -> list[Part]:
    """The terms for one device. ``teacher_config`` None: a method without a teacher. ``rewrites``:
    the method's teacher rewrites on this device (a local transformers rewriter); ``teacher_samples``:
    it samples completions (off-policy KD and the mixed control). The parameter counts, where already
    known, save counting them again."""
    t, r = recipe.training, recipe.rewrite
    compute = 2 if t.bf16 else 4
    student = student_parameters or parameter_count(student_config)
    trainable = (lora_parameter_count(student_config, t.lora.r, list(t.lora.target_modules)) if t.lora else student)
    which = "adapter" if t.lora else "student"
    parts = [
        Part("student weights, fp32", f"{count(student)} × 4 B", student * 4, True, True),
        Part(f"{which} gradients, fp32", f"{count(trainable)} × 4 B", trainable * 4, True, True),
        Part("AdamW states (m, v)", f"{count(trainable)} × 8 B", trainable * 8, True, True),
    ]
    if t.lora:
        parts.append(Part("adapter weights, fp32", f"{count(trainable)} × 4 B", trainable * 4, True, True))
    if teacher_config is not None:
        teacher = teacher_parameters or parameter_count(teacher_config)
        parts.append(Part(f"teacher weights, {'bf16' if t.bf16 else 'fp32'}", f"{count(teacher)} × {compute} B",
                          teacher * compute, True, True))
    step = t.batch_size * t.gradient_accumulation_steps
    sampled = prompt_tokens + t.max_completion_length
    if t.vllm is None:
        per_token = kv_bytes_per_token(student_config, compute)
        parts.append(Part("student KV cache while sampling",
                          f"{per_token / 1024:g} KiB/token × {step} sequences × {sampled:,} tokens",
                          per_token * step * sampled, False))
    if teacher_config is not None and rewrites:
        per_token = kv_bytes_per_token(teacher_config, compute)
        n = min(r.batch_size, step)
        length = prompt_tokens + REWRITE_INSTRUCTION_TOKENS + t.max_completion_length + r.max_new_tokens
        parts.append(Part("teacher KV cache while rewriting",
                          f"{per_token / 1024:g} KiB/token × {n} rewrites × {length:,} tokens",
                          per_token * n * length, False))
    if teacher_config is not None and teacher_samples:
        per_token = kv_bytes_per_token(teacher_config, compute)
        parts.append(Part("teacher KV cache while sampling",
                          f"{per_token / 1024:g} KiB/token × {step} sequences × {sampled:,} tokens",
                          per_token * step * sampled, False))
    text = student_config.get_text_config()
    if t.gradient_checkpointing:
        per_layer = t.batch_size * sampled * text.hidden_size * compute
        parts.append(Part("student activations, checkpointed (each layer's input)",
                          f"{text.num_hidden_layers} layers × {t.batch_size} × {sampled:,} tokens × {text.hidden_size} "
                          f"× {compute} B", per_layer * text.num_hidden_layers, False))
    return parts


def peak(parts: list[Part], processes: int = 1, sharded: bool = False) -> int:
    """The static parts (divided over ``processes`` when ``sharded``) plus the largest phase."""
    static = sum(p.bytes / (processes if sharded and p.shardable else 1) for p in parts if p.static)
    return int(static + max((p.bytes for p in parts if not p.static), default=0))


def format_table(parts: list[Part], processes: int, gpu_bytes: int | None, gpu_name: str | None) -> list[str]:
    """The estimate as lines: one per part, then the peak (one device, and sharded over the processes)."""
    lines = ["memory per device, ESTIMATED from the configs (held all run; the largest phase counts once):"]
    for p in parts:
        lines.append(f"  {p.name}: {size(p.bytes)} ({p.arithmetic}){'' if p.static else ' [phase]'}")
    line = f"  peak: {size(peak(parts))} on one device"
    if processes > 1:
        line += f", {size(peak(parts, processes, sharded=True))} with ZeRO-3/FSDP over {processes} processes"
    lines.append(line + "; not counted: the loss's logit chunks, recomputed activations, CUDA context")
    if gpu_bytes:
        lines.append(f"  the visible GPU ({gpu_name}) has {size(gpu_bytes)}")
    return lines
