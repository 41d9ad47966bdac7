"""Batched generation with a local ``transformers`` model: length-sorted, left-padded, KV cache."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and a label; the same in every process and Python version."""
    return zlib.crc32("/".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 64
    extra: dict = field(default_factory=dict)

    def kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens, **self.extra}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            **self.extra,
        }


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    truncated: bool  # hit max_new_tokens before an end-of-sequence token
    end_id: int | None = None  # the end token it stopped on (not in token_ids); None when truncated


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class _RowBudgets(StoppingCriteria):
    """Stops each row of a batch once it has generated its own number of new tokens."""

    def __init__(self, prompt_width: int, budgets: list[int], device) -> None:
        self.prompt_width = prompt_width
        self.budgets = torch.tensor(budgets, device=device)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.budgets


@torch.no_grad()
def max_positions(config) -> int | None:
    """The positions a model reads (``max_position_embeddings`` of its text config), if it says.
    Past them a model writes garbage (rotary embeddings) or fails on an index (learned ones)."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str] | list[list[int]],
    settings: GenerationSettings,
    *,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
    max_new_tokens: list[int] | None = None,
    on_generate: Callable[[], None] | None = None,
) -> list[Generation]:
    """Sample one completion per prompt (text prompts are tokenized as given, no template).

    Prompts are sorted by length so each batch pads little; results come back in input order.
    With ``seed`` set, the same prompts give the same samples whatever else ran before.
    ``max_new_tokens`` gives each prompt its own budget (at most ``settings.max_new_tokens``): a
    row stops at its budget, and a batch as soon as all its rows have, so a short budget saves
    the work. Rows that stop earlier do not change what the other rows sample. ``on_generate`` is
    called after each ``model.generate`` call (how many a process made is what keeps several
    processes in step).
    """
    if not prompts:
        return []
    ids = [
        p if isinstance(p, list) else tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts
    ]
    if max_new_tokens is not None and len(max_new_tokens) != len(ids):
        raise ValueError(f"got {len(max_new_tokens)} token budgets for {len(ids)} prompts")
    budgets = [
        settings.max_new_tokens if max_new_tokens is None else max(0, min(b, settings.max_new_tokens))
        for b in (max_new_tokens or [None] * len(ids))
    ]
    per_row = max_new_tokens is not None
    out: list[Generation | None] = [None] * len(ids)
    positions = max_positions(model.config)
    if positions and any(len(p) + b > positions for p, b in zip(ids, budgets)):
        # A row stops where the positions end; a prompt that fills them is not run at all.
        budgets = [max(0, min(b, positions - len(p))) for p, b in zip(ids, budgets)]
        per_row = True
        for i, p in enumerate(ids):
            if len(p) >= positions:
                out[i] = Generation(text="", token_ids=[], truncated=True, end_id=None)
    order = sorted((i for i in range(len(ids)) if out[i] is None), key=lambda i: len(ids[i]))
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device
    # A seeded call samples from its own stream: the random state of the CPU and of this model's GPU
    # is put back afterwards, so whatever else samples in this process (the student) is untouched.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        out = _generate_batches(model, tokenizer, ids, order, budgets, eos, pad_id, device, settings,
                                per_row=per_row, progress=progress, out=out, on_generate=on_generate)
    return out  # type: ignore[return-value]


def _generate_batches(model, tokenizer, ids, order, budgets, eos, pad_id, device, settings, *, per_row: bool,
                      progress, out, on_generate=None):
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
                attention[row, width - len(ids[i]) :] = 1
            row_budgets = [budgets[i] for i in batch]
            kwargs = settings.kwargs()
            if per_row:
                kwargs["max_new_tokens"] = max(max(row_budgets), 1)
                kwargs["stopping_criteria"] = StoppingCriteriaList([_RowBudgets(width, row_budgets, device)])
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                pad_token_id=pad_id,
                eos_token_id=eos,
                **kwargs,
            )[:, width:].cpu()
            if on_generate is not None:
                on_generate()
            for row, i in enumerate(batch):
                seq = generated[row].tolist()[: budgets[i]]
                cut = next((j for j, t in enumerate(seq) if t in eos), None)
                kept = seq if cut is None else seq[:cut]
                out[i] = Generation(
                    text=tokenizer.decode(kept, skip_special_tokens=True),
                    token_ids=kept,
                    truncated=cut is None,
                    end_id=None if cut is None else seq[cut],
                )
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return out


def pad_generate_calls(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n: int,
                       on_generate: Callable[[], None] | None = None) -> None:
    """``n`` one-token ``generate`` calls: a process that made fewer calls than another makes up the
    difference, since with the model's weights sharded (ZeRO-3, FSDP) every call is collective and a
    process that made fewer would leave the others waiting for ever."""
    pad = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    greedy = GenerationSettings(max_new_tokens=1, temperature=0.0, batch_size=1)
    for _ in range(n):
        generate_texts(model, tokenizer, [pad], greedy, on_generate=on_generate)
