"""The embedded default: a word-piece tokenizer and a tiny Qwen3 student and teacher, trained
from scratch on the chain task (:mod:`mpdistill.tasks.chain`) so the whole pipeline runs on a CPU.

``bootstrap()`` is deterministic from its seed. The student is pretrained on verbose traces only
(both routes), so it writes like a small reasoning model; the teacher is larger, writes concise
solutions (mostly route L: its own style), learns to rewrite a verbose trace into a concise one
along the trace's own route, and has read some verbose solutions too (``TEACHER_MIX``). Nothing
here decides what the models will later answer: their accuracy and length on held-out problems
come from sampling them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from .tasks import chain

log = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
WORDS = ("so", "we", "need", "now", "have", "the", "answer", "is", "check", "ok", "wait", "no", "rewrite", "short")
SYMBOLS = tuple("0123456789+-=:\n QA")
# Words are one token each, every other character is a token of its own.
PIECE_PATTERN = r"[a-z]+|[\s\S]"


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate((PAD, EOS, UNK, *SYMBOLS, *WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    tok.model_max_length = 512
    return tok


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int


# Both shapes learn the task; the student is stopped early (see BootstrapPlan) so that, like a
# small reasoning model, it is right most of the time but not always.
STUDENT_SHAPE = ModelShape(96, 288, 3, 4, 2, 24)
TEACHER_SHAPE = ModelShape(128, 384, 4, 4, 2, 32)


def make_model(shape: ModelShape, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        rope_theta=10000.0,
        **asdict(shape),
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return model


# ---------------------------------------------------------------------------------------------
# Corpora: (prompt, completion) pairs; the loss covers the completion and its end-of-sequence.


# The share of the student's examples where the problem asks for a concise answer (the prompt ends
# with chain.CONCISE_INSTRUCTION) and the answer is concise, as instruction-tuned models have seen
# such requests: asked, it can be brief; not asked, it stays verbose. Self-distillation's teacher
# is this student, asked.
STUDENT_INSTRUCTED_SHARE = 0.10


def student_example(rng: random.Random) -> tuple[str, str]:
    problem = chain.sample_problem(rng, "train")
    route = rng.choice(chain.ROUTES)
    if rng.random() < STUDENT_INSTRUCTED_SHARE:
        return problem.prompt + chain.CONCISE_INSTRUCTION, chain.concise_trace(problem, route)
    return problem.prompt, chain.verbose_trace(problem, route, rng)


TEACHER_OWN_ROUTE_P = {"L": 0.85, "P": 0.15}
# What the teacher reads and writes. Mostly concise solutions (its own style) and rewrites; a
# minority of verbose solutions, because a large teacher has read plenty of rambling reasoning
# even though it prefers not to write it. Without them its next-token distribution inside a
# student's verbose phrasing ("so now we ...") is meaningless, and any divergence computed on the
# student's own traces (OPD, or MPD's fallback) would train the student on noise.
TEACHER_MIX = {"concise": 0.40, "verbose": 0.15, "rewrite": 0.45}


def teacher_example(rng: random.Random) -> tuple[str, str]:
    problem = chain.sample_problem(rng, "train")
    u = rng.random()
    if u < TEACHER_MIX["concise"]:
        route = "L" if rng.random() < TEACHER_OWN_ROUTE_P["L"] else "P"
        return problem.prompt, chain.concise_trace(problem, route)
    if u < TEACHER_MIX["concise"] + TEACHER_MIX["verbose"]:
        return problem.prompt, chain.verbose_trace(problem, rng.choice(chain.ROUTES), rng)
    route = rng.choice(chain.ROUTES)
    trace = chain.verbose_trace(problem, route, rng)
    return chain.rewrite_prompt(problem.prompt, trace), chain.concise_trace(problem, route)


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


# ---------------------------------------------------------------------------------------------
# Bootstrap: train both models and save them where ``embedded:student`` / ``embedded:teacher``
# resolve.

SHIPPED_DIR = Path(__file__).parent / "assets" / "embedded"


@dataclass(frozen=True)
class BootstrapPlan:
    """How the embedded models are trained.

    Both models are checked every ``check_every`` steps on ``validation_n`` problems of the
    validation split (never the evaluation split), sampled at temperature 1. The student stops at
    the first check where its accuracy reaches ``student_stop_accuracy``: an under-trained small
    model, right most of the time but not always. The teacher stops once it solves at least
    ``teacher_stop_accuracy`` and rewrites at least ``teacher_stop_rewrite`` of held-out verbose
    traces exactly into the concise trace along the same route. Each runs at most ``*_max_steps``.
    """

    seed: int = 0
    student_max_steps: int = 3000
    teacher_max_steps: int = 3000
    student_stop_accuracy: float = 0.80
    teacher_stop_accuracy: float = 0.97
    teacher_stop_rewrite: float = 0.95
    first_check: int = 600
    check_every: int = 100
    validation_n: int = 200
    batch_size: int = 64
    lr: float = 3e-3


def validation_scores(model, tokenizer, n: int, seed: int, rewrites: bool) -> dict:
    """Accuracy (and rewrite exactness) on validation-split problems, sampled at temperature 1."""
    from .rollout import GenerationSettings, generate_texts

    rng = random.Random(seed)
    problems = [chain.sample_problem(rng, "validation") for _ in range(n)]
    gens = generate_texts(
        model, tokenizer, [p.prompt for p in problems], GenerationSettings(max_new_tokens=256, batch_size=n), seed=seed
    )
    scores = {
        "accuracy": sum(chain.is_correct(g.text, p.answer) for g, p in zip(gens, problems)) / n,
        "mean_tokens": sum(len(g.token_ids) for g in gens) / n,
    }
    if rewrites:
        routes = [rng.choice(chain.ROUTES) for _ in problems]
        traces = [chain.verbose_trace(p, r, rng) for p, r in zip(problems, routes)]
        gens = generate_texts(
            model,
            tokenizer,
            [chain.rewrite_prompt(p.prompt, t) for p, t in zip(problems, traces)],
            GenerationSettings(max_new_tokens=128, batch_size=n),
            seed=seed,
        )
        scores["rewrite_exact"] = sum(
            g.text == chain.concise_trace(p, r) for g, p, r in zip(gens, problems, routes)
        ) / n
    return scores


def embedded_dir() -> Path:
    """Where the embedded models live: shipped with the package, else bootstrapped into the cache."""
    if (SHIPPED_DIR / "teacher" / "config.json").exists():
        return SHIPPED_DIR
    cache = Path.home() / ".cache" / "mpdistill" / "embedded"
    if not (cache / "teacher" / "config.json").exists():
        log.warning("embedded models not found; bootstrapping them into %s (one-time, minutes on a CPU)", cache)
        bootstrap(cache)
    return cache


def _save(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    from .model_record import write_record

    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    write_record(path, **EMBEDDED_RECORD)


# How the embedded models read: chain problems as plain text ("Q:..."), answers "A:<digit>", within
# the demo's evaluation budget (recipes/embedded.yaml, eval.max_new_tokens).
EMBEDDED_RECORD = {"task": "chain", "prompt_template": "{problem}", "prompt_style": "plain", "max_new_tokens": 256}


STAGES = ("student", "teacher")


def bootstrap(
    out_dir: str | Path,
    plan: BootstrapPlan = BootstrapPlan(),
    progress: Callable[[str, int, float, dict | None], None] | None = None,
    only: tuple[str, ...] = STAGES,
    device: str | None = None,
) -> dict:
    """Train the embedded student and teacher from scratch, deterministically from ``plan.seed``.

    Writes ``out_dir/student`` and ``out_dir/teacher``, each loadable with ``from_pretrained`` and
    holding a ``bootstrap.json`` (plan, validation checks, final loss, wall time, device). ``only``
    trains one of the two, so both can be trained by two processes (or machines) at once.
    """
    unknown = set(only) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown bootstrap stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    manifest: dict = {"plan": asdict(plan), "stages": {}}
    for stage in (s for s in STAGES if s in only):
        start = time.time()
        seed = plan.seed + STAGES.index(stage)
        shape = STUDENT_SHAPE if stage == "student" else TEACHER_SHAPE
        model = make_model(shape, tokenizer, seed).to(device)
        make = student_example if stage == "student" else teacher_example
        max_steps = plan.student_max_steps if stage == "student" else plan.teacher_max_steps
        checks: list[dict] = []

        def check(step: int, _name=stage, _model=model, _checks=checks) -> dict:
            scores = validation_scores(_model, tokenizer, plan.validation_n, plan.seed + 2, _name == "teacher")
            _model.train()
            _checks.append({"step": step, **scores})
            if progress is not None:
                progress(_name, step, float("nan"), scores)
            return scores

        def should_stop(step: int, _name=stage) -> bool:
            if step < plan.first_check or (step - plan.first_check) % plan.check_every:
                return False
            scores = check(step)
            if _name == "student":
                return scores["accuracy"] >= plan.student_stop_accuracy
            return scores["accuracy"] >= plan.teacher_stop_accuracy and scores["rewrite_exact"] >= plan.teacher_stop_rewrite

        report = None if progress is None else (lambda s, loss, _n=stage: progress(_n, s + 1, loss, None))
        losses = pretrain(
            model, make, tokenizer, steps=max_steps, seed=seed, batch_size=plan.batch_size, lr=plan.lr,
            progress=report, should_stop=should_stop,
        )
        _save(model.cpu(), tokenizer, out_dir / stage)
        tail = losses[-50:]
        info = {
            "stage": stage,
            "shape": {k: getattr(model.config, k) for k in asdict(STUDENT_SHAPE)},
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": len(losses),
            "final_loss": sum(tail) / len(tail),
            "validation_checks": checks,
            "seconds": round(time.time() - start, 1),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        }
        manifest["stages"][stage] = info
        record = out_dir / stage / "bootstrap.json"
        record.write_text(json.dumps({"plan": asdict(plan), **info}, indent=2) + "\n", encoding="utf-8")
    return manifest
