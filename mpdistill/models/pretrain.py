"""Pretraining a tiny causal LM from scratch on generated (prompt, completion) pairs: a fresh batch
every step, rows grouped by length, the loss on the completion only. The embedded worlds' models are
trained this way (:mod:`mpdistill.models.worlds`)."""

from __future__ import annotations

import math
import random
from typing import Callable, Iterator

import torch
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM


def _batches(
    make: Callable[[random.Random], tuple[str, str]],
    tokenizer: PreTrainedTokenizerFast,
    rng: random.Random,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    eos = tokenizer.eos_token_id
    pool = 8  # batches drawn at once and regrouped by length, so short rows are not padded to long ones
    while True:
        rows = []
        for _ in range(batch_size * pool):
            prompt, completion = make(rng)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos]
            rows.append((p, c))
        rows.sort(key=lambda r: len(r[0]) + len(r[1]))
        groups = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        rng.shuffle(groups)
        for group in groups:
            yield _collate(group, tokenizer.pad_token_id)


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p) : n] = torch.tensor(c)
        mask[i, :n] = 1
    return ids, mask, labels


def pretrain(
    model: Qwen3ForCausalLM,
    make: Callable[[random.Random], tuple[str, str]],
    tokenizer: PreTrainedTokenizerFast,
    *,
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    progress: Callable[[int, float], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> list[float]:
    """Next-token training on a fresh synthetic batch every step (no data is seen twice).

    ``should_stop(step)`` is asked after every step; returning True ends training there.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    model.train()
    losses = []
    batches = _batches(make, tokenizer, rng, batch_size)
    device = next(model.parameters()).device
    for step in range(steps):
        ids, mask, labels = (t.to(device) for t in next(batches))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
        if should_stop is not None and should_stop(step + 1):
            break
    model.eval()
    return losses
