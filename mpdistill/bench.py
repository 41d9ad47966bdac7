"""``mpdistill bench``: the cost of an MPD step next to TRL's on-policy distillation (OPD) step.

Both trainers are built by :func:`mpdistill.pipeline.build_trainer` from one recipe that differs
only in ``method``: same student weights, teacher, prompts (same data seed), batch size and
completion length. After warm-up steps the two are stepped alternately in one process (ABBA
order, so a slow drift of the machine hits both alike), each step through the trainers' own
``training_step`` and an optimizer step. Phases are timed by wrapping the trainers' methods on
the instance (no training code changes):

- ``student_rollout``: TRL's ``_generate_single_turn`` (the student's ``generate``);
- ``teacher_rewrite``: the MPD rewriter's ``rewrite`` call;
- ``verification``: the rest of MPD's ``_generate`` (decode, verify, mix, rollout log);
- ``batch_preparation``: the rest of TRL's ``_prepare_inputs`` (tokenizing, padding);
- ``teacher_scoring``: the teacher's forward passes inside the loss;
- ``student_forward_backward``: the rest of ``training_step`` (student forward, chunked JSD, backward);
- ``optimizer``: gradient clipping, optimizer and scheduler step.

Peak memory per step is ``torch.cuda.max_memory_allocated`` on a GPU. On CPU a process's
resident set cannot be attributed to one step, so ``--memory-lengths`` measures each method and
length in a fresh process (:func:`bench_memory`).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

PHASES = (
    "student_rollout",
    "teacher_rewrite",
    "verification",
    "batch_preparation",
    "teacher_scoring",
    "student_forward_backward",
    "optimizer",
)


@dataclass
class BenchSettings:
    student: str = "embedded:student"  # a model (embedded:*, folder, Hub name) or a config .json (random weights)
    teacher: str = "embedded:teacher"
    tokenizer: str | None = None  # needed with config .json models
    recipe: str | None = None  # default: recipes/embedded.yaml
    batch_size: int | None = None  # default: the recipe's
    completion_length: int | None = None  # default: the recipe's max_completion_length
    rewrite_tokens: int | None = None  # default: the recipe's rewrite.max_new_tokens
    prompt_length: int = 128  # random-weight models only: tokens per synthetic prompt
    warmup: int = 1
    repeats: int = 5
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    rewrite_budgets: bool = True  # False: rewrites run to max_new_tokens (to measure what the budgets save)
    overrides: dict = field(default_factory=dict)


# A small run for tests: long enough for the embedded student to finish traces, so rewrites happen.
QUICK = {"batch_size": 4, "completion_length": 128, "warmup": 1, "repeats": 2}


# ---------------------------------------------------------------------------------------------
# Timing and memory.


class PhaseClock:
    """Accumulates seconds per phase; synchronises the GPU around each timed region."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cuda = torch.cuda.is_available()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = self.now()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self.now() - start

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed

    def reset(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> int | None:
    """Peak GPU memory allocated since the last reset; None on CPU.

    A CPU process's resident set keeps what the allocator once held, so it cannot attribute a
    peak to one step of two trainers sharing a process: :func:`bench_memory` uses one process per
    measurement there instead.
    """
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return None


# ---------------------------------------------------------------------------------------------
# Models and trainers.


def _load(name: str, tokenizer_path: str | None, dtype: torch.dtype, seed: int):
    """A model by name, or a randomly initialised one from a config ``.json`` (with ``tokenizer_path``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .config import ConfigError
    from .pipeline import load_model

    if name.endswith(".json"):
        if tokenizer_path is None:
            raise ConfigError(f"{name}: a config file gives random weights but no tokenizer; pass --tokenizer DIR")
        config = AutoConfig.from_pretrained(name)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(tokenizer_path, padding_side="left")
    return load_model(name, dtype=dtype)


def _accept_all_task():
    """With random weights nothing parses: every text 'has' the same answer, so every rewrite runs."""
    from .tasks import Task

    return Task(name="bench", extract_answer=lambda text: "x", answers_match=lambda a, b: True)


def _synthetic_rows(tokenizer, n: int, length: int, seed: int) -> list[dict]:
    """Prompts of about ``length`` tokens decoded from random ids of the ordinary vocabulary."""
    g = torch.Generator().manual_seed(seed)
    top = min(tokenizer.vocab_size, 30_000)
    rows = []
    for _ in range(n):
        ids = torch.randint(1_000, top, (length,), generator=g).tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        rows.append({"prompt": text, "problem": text, "answer": None})
    return rows


def build_pair(settings: BenchSettings, run_dir: Path, methods: tuple[str, ...] = ("mpd", "opd")):
    """The MPD and OPD trainers (or those in ``methods``) over the same student weights, teacher, prompts and budget."""
    from .config import load_recipe
    from .demo import RECIPE
    from .pipeline import build_trainer, check_compatible, training_problems

    overrides: dict = {"training": {}, "rewrite": {}, **settings.overrides}
    if settings.batch_size:
        overrides["training"]["batch_size"] = settings.batch_size
    if settings.completion_length:
        overrides["training"]["max_completion_length"] = settings.completion_length
    if settings.rewrite_tokens:
        overrides["rewrite"]["max_new_tokens"] = settings.rewrite_tokens
    steps = settings.warmup + settings.repeats
    overrides["training"].update({"steps": steps, "logging_steps": steps})
    overrides["seed"] = settings.seed
    recipe = load_recipe(Path(settings.recipe) if settings.recipe else RECIPE, overrides)

    cuda = torch.cuda.is_available()
    dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}[
        settings.dtype
    ]
    random_weights = settings.student.endswith(".json")
    teacher, t_tok = _load(settings.teacher, settings.tokenizer, dtype, settings.seed + 1)
    students = {}
    for method in methods:  # a copy of the same initial weights for each
        students[method], tokenizer = _load(settings.student, settings.tokenizer, dtype, settings.seed)
    check_compatible(settings.student, tokenizer, students[methods[0]], settings.teacher, t_tok, teacher)
    if cuda:
        teacher = teacher.to("cuda")
        students = {k: m.to("cuda") for k, m in students.items()}

    n_rows = recipe.training.batch_size * steps
    if random_weights:
        rows = _synthetic_rows(tokenizer, n_rows, settings.prompt_length, settings.seed)
    else:
        rows = training_problems(recipe.model_copy(update={"data": recipe.data.model_copy(update={"n_train": n_rows})}))
    trainers = {}
    for method in methods:
        trainers[method] = build_trainer(
            recipe.model_copy(update={"method": method}), students[method], teacher, tokenizer, rows, run_dir / method
        )
    if random_weights and "mpd" in trainers:
        trainers["mpd"].task = _accept_all_task()
    return recipe, trainers


def instrument(trainer, clock: PhaseClock, *, budgets: bool = True) -> None:
    """Time the phases of ``trainer``'s step by wrapping its methods on the instance.

    ``budgets=False`` drops the per-rewrite length budgets, so their saving can be measured.
    """
    trainer._generate_single_turn = clock.wrap("student_rollout", trainer._generate_single_turn)
    if hasattr(trainer, "rewriter"):
        rewrite = trainer.rewriter.rewrite
        if not budgets:
            def rewrite(prompts, max_new_tokens=None, _full=rewrite):  # noqa: E306
                return _full(prompts)
        trainer.rewriter.rewrite = clock.wrap("teacher_rewrite", rewrite)
    trainer._generate = clock.wrap("_generate", trainer._generate)
    trainer._prepare_inputs = clock.wrap("_prepare_inputs", trainer._prepare_inputs)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    original_training_step = trainer.training_step

    def training_step(*args, **kwargs):
        with clock.phase("_training_step"):
            return original_training_step(*args, **kwargs)

    trainer.training_step = training_step
    original_redirect = trainer._forward_redirection

    def redirect(wrapper, unwrapped, fn, *args, **kwargs):
        # TRL routes the teacher's loss-time forward through _forward_redirection(teacher_model, ...).
        if unwrapped is teacher:
            with clock.phase("teacher_scoring"):
                return original_redirect(wrapper, unwrapped, fn, *args, **kwargs)
        return original_redirect(wrapper, unwrapped, fn, *args, **kwargs)

    trainer._forward_redirection = redirect


def _phases(raw: dict[str, float]) -> dict[str, float]:
    """Exclusive phase times from the nested wrapped timings."""
    g = raw.get
    generate = g("_generate", 0.0)
    rollout, rewrite = g("student_rollout", 0.0), g("teacher_rewrite", 0.0)
    prepare = g("_prepare_inputs", 0.0)
    scoring = g("teacher_scoring", 0.0)
    return {
        "student_rollout": rollout,
        "teacher_rewrite": rewrite,
        "verification": max(generate - rollout - rewrite, 0.0),
        "batch_preparation": max(prepare - generate, 0.0),
        "teacher_scoring": scoring,
        "student_forward_backward": max(g("_training_step", 0.0) - prepare - scoring, 0.0),
        "optimizer": g("optimizer", 0.0),
    }


def run_step(trainer, batch, clock: PhaseClock) -> dict:
    """One full training step: generation, (rewrite), loss, backward, optimizer step."""
    model = trainer.model
    reset_peak_memory()
    clock.reset()
    start = clock.now()
    loss = trainer.training_step(model, batch, None)
    with clock.phase("optimizer"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    total = clock.now() - start
    trainer.state.global_step += 1
    phases = _phases(clock.reset())
    step = {"seconds": total, **phases, "peak_memory_bytes": peak_memory_bytes(), "loss": float(loss)}
    step.update(_tokens(trainer))
    return step


def _tokens(trainer) -> dict:
    """Tokens the student generated and tokens the loss ran on, from the trainer's own metrics."""
    m = trainer._metrics["train"]
    generated = m["completions/mean_length"][-1]  # TRL logs the student's own completions
    trained = m["mpd/trained_tokens"][-1] if m.get("mpd/trained_tokens") else generated
    out = {"student_tokens_per_sample": generated, "trained_tokens_per_sample": trained}
    if m.get("mpd/trained_on_rewrite"):
        out["rewrite_share"] = m["mpd/trained_on_rewrite"][-1]
    return out


def run_bench(settings: BenchSettings, *, progress: Callable[[str], None] | None = None) -> dict:
    """Warm up, then alternate MPD and OPD steps; per-step phases and the MPD/OPD ratio."""
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="mpdistill-bench-") as tmp:
        recipe, trainers = build_pair(settings, Path(tmp))
        vocab_size = trainers["opd"].model.config.get_text_config().vocab_size
        clock = PhaseClock()
        iterators = {}
        for method, trainer in trainers.items():
            instrument(trainer, clock, budgets=settings.rewrite_budgets)
            trainer.create_optimizer_and_scheduler(num_training_steps=settings.warmup + settings.repeats)
            # Set by Trainer's own loop, which the bench replaces with explicit steps.
            trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
            trainer.model.train()
            iterators[method] = iter(trainer.get_train_dataloader())
        steps: dict[str, list[dict]] = {"mpd": [], "opd": []}
        for r in range(settings.warmup + settings.repeats):
            order = ("mpd", "opd") if r % 2 == 0 else ("opd", "mpd")  # ABBA
            for method in order:
                step = run_step(trainers[method], next(iterators[method]), clock)
                step["warmup"] = r < settings.warmup
                steps[method].append(step)
                say(f"{'warm-up' if step['warmup'] else 'step'} {r + 1} {method}: {step['seconds']:.2f}s")
    return summarize_bench(settings, recipe, steps, vocab_size)


def summarize_bench(settings: BenchSettings, recipe, steps: dict[str, list[dict]], vocab_size: int) -> dict:
    measured = {m: [s for s in v if not s["warmup"]] for m, v in steps.items()}
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(measured["mpd"], measured["opd"])]
    methods = {}
    for method, rows in measured.items():
        methods[method] = {
            "median_step_seconds": statistics.median(s["seconds"] for s in rows),
            "phases_median_seconds": {p: statistics.median(s[p] for s in rows) for p in PHASES},
            "peak_memory_bytes_max": None if rows[0]["peak_memory_bytes"] is None else max(s["peak_memory_bytes"] for s in rows),
            "student_tokens_per_sample": statistics.fmean(s["student_tokens_per_sample"] for s in rows),
            "trained_tokens_per_sample": statistics.fmean(s["trained_tokens_per_sample"] for s in rows),
            "rollout_tokens_per_second": _rate(rows, recipe.training.batch_size),
            "steps": rows,
        }
    t = recipe.training
    return {
        "settings": {**asdict(settings), "batch_size": t.batch_size, "completion_length": t.max_completion_length,
                     "rewrite_tokens": recipe.rewrite.max_new_tokens, "method_recipe": recipe.model_dump()},
        "device": _device(),
        "vocab_size": vocab_size,
        "n_steps_per_method": len(ratios),
        "ratio_mpd_over_opd": {
            "per_step": ratios,
            "min": min(ratios),
            "median": statistics.median(ratios),
            "max": max(ratios),
        },
        "methods": methods,
    }


def _rate(rows: list[dict], batch_size: int) -> float | None:
    seconds = sum(s["student_rollout"] for s in rows)
    tokens = sum(s["student_tokens_per_sample"] * batch_size for s in rows)
    return tokens / seconds if seconds else None


def _device() -> str:
    import os
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}"


def format_bench(result: dict) -> str:
    """Markdown: per-phase median seconds for each method, and the ratio with its spread."""
    s = result["settings"]
    m = result["methods"]
    r = result["ratio_mpd_over_opd"]
    lines = [
        f"Device: {result['device']}. Student {s['student']}, teacher {s['teacher']}; batch {s['batch_size']}, "
        f"completion ≤ {s['completion_length']} tokens, rewrite ≤ {s['rewrite_tokens']} tokens "
        f"({'stopped once too long to accept' if s['rewrite_budgets'] else 'no per-rewrite budgets'}); "
        f"{s['warmup']} warm-up + {result['n_steps_per_method']} measured steps per method, alternating.",
        "",
        "| phase (median s) | MPD | OPD |",
        "|---|---:|---:|",
    ]
    for p in PHASES:
        lines.append(f"| {p} | {m['mpd']['phases_median_seconds'][p]:.3f} | {m['opd']['phases_median_seconds'][p]:.3f} |")
    lines.append(f"| **step** | **{m['mpd']['median_step_seconds']:.3f}** | **{m['opd']['median_step_seconds']:.3f}** |")
    for key, label, fmt in (
        ("student_tokens_per_sample", "student tokens / sample (mean)", "{:.1f}"),
        ("trained_tokens_per_sample", "tokens the loss ran on / sample (mean)", "{:.1f}"),
        ("rollout_tokens_per_second", "rollout tokens / s", "{:.0f}"),
    ):
        a, b = m["mpd"][key], m["opd"][key]
        lines.append(f"| {label} | {fmt.format(a) if a is not None else 'n/a'} | {fmt.format(b) if b is not None else 'n/a'} |")
    mem = [m[k]["peak_memory_bytes_max"] for k in ("mpd", "opd")]
    if mem[0] is not None:
        lines.append("| peak GPU memory allocated (MiB) | " + " | ".join(f"{v / 2**20:.0f}" for v in mem) + " |")
    lines += [
        "",
        f"MPD/OPD step time, n = {result['n_steps_per_method']} pairs: median {r['median']:.2f}× "
        f"(min {r['min']:.2f}×, max {r['max']:.2f}×).",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Peak memory against completion length.


def _in_fresh_process(fn: Callable, *args):
    """``fn(*args)`` in a newly started process, so its peak memory is its own."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def bench_memory(settings: BenchSettings, lengths: list[int]) -> dict:
    """Peak memory of an MPD and an OPD step at each completion length, each in a fresh process.

    Each measurement builds one trainer in a new process, runs a warm-up step and a measured step
    at the given completion length, and reports the peak: GPU memory allocated during the measured
    step, or on CPU the process's peak resident set (``ru_maxrss``) and how much of it the loaded
    models already took. Meant for randomly initialised models (config ``.json``), which never stop
    early, so every completion has exactly the given length; the rewrite budget is half of it.
    """
    rows = []
    for length in lengths:
        s = asdict(BenchSettings(**{**asdict(settings), "completion_length": length,
                                    "rewrite_tokens": max(1, length // 2), "warmup": 1, "repeats": 1}))
        row = {"completion_length": length}
        for method in ("mpd", "opd"):
            point = _in_fresh_process(_memory_point, s, method)
            row.update({f"{method}_{k}": v for k, v in point.items()})
        rows.append(row)
    return {"device": _device(), "batch_size": point["batch_size"], "student": settings.student,
            "teacher": settings.teacher, "vocab_size": point["vocab_size"], "rows": rows}


def _memory_point(settings: dict, method: str) -> dict:
    """In a fresh process: one warm-up and one measured step of ``method``; its peak memory."""
    import resource

    s = BenchSettings(**settings)
    with tempfile.TemporaryDirectory(prefix="mpdistill-bench-") as tmp:
        recipe, trainers = build_pair(s, Path(tmp), methods=(method,))
        trainer = trainers[method]
        loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        clock = PhaseClock()
        instrument(trainer, clock, budgets=s.rewrite_budgets)
        trainer.create_optimizer_and_scheduler(num_training_steps=2)
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
        trainer.model.train()
        batches = iter(trainer.get_train_dataloader())
        run_step(trainer, next(batches), clock)
        step = run_step(trainer, next(batches), clock)
    gpu = step["peak_memory_bytes"]
    return {
        "peak_bytes": gpu if gpu is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "models_loaded_bytes": None if gpu is not None else loaded,
        "student_tokens": step["student_tokens_per_sample"],
        "batch_size": recipe.training.batch_size,
        "vocab_size": trainer.model.config.get_text_config().vocab_size,
    }


def format_memory(result: dict) -> str:
    gpu = torch.cuda.is_available()
    kind = "GPU allocated in the step" if gpu else "process peak RSS"
    lines = [
        f"Device: {result['device']}. Student {result['student']}, teacher {result['teacher']}, "
        f"batch {result['batch_size']}; each cell a fresh process: one warm-up and one measured step.",
        "",
        f"| completion tokens | MPD peak ({kind}, MiB) | OPD peak (MiB) | MPD / OPD |"
        + ("" if gpu else " OPD above its loaded models (MiB) |")
        + " one fp32 batch × length × vocab tensor (MiB) |",
        "|---:|---:|---:|---:|" + ("" if gpu else "---:|") + "---:|",
    ]
    for r in result["rows"]:
        a, b = r["mpd_peak_bytes"], r["opd_peak_bytes"]
        logits = result["batch_size"] * r["completion_length"] * result["vocab_size"] * 4 / 2**20
        above = "" if gpu else f" {(b - r['opd_models_loaded_bytes']) / 2**20:.0f} |"
        lines.append(f"| {r['completion_length']} | {a / 2**20:.0f} | {b / 2**20:.0f} | {a / b:.2f} |{above} {logits:.0f} |")
    return "\n".join(lines) + "\n"


def bench_loss_memory(token_counts: list[int], vocab_size: int = 151_936, hidden_size: int = 64) -> dict:
    """Peak memory of TRL's chunked divergence loss alone (forward + backward), by tokens in the batch.

    Each count runs in a fresh process on random hidden states and ``lm_head`` weights of the given
    shape (the Qwen3 vocabulary by default), and reports how far the loss raised the peak over what
    its inputs took: on a GPU ``max_memory_allocated``, on CPU ``ru_maxrss``. This is the loss MPD
    and OPD share; it never holds a tokens × vocabulary tensor, only tiles of it.
    """
    rows = [_in_fresh_process(_loss_memory_point, n, vocab_size, hidden_size) for n in token_counts]
    return {"device": _device(), "vocab_size": vocab_size, "hidden_size": hidden_size, "rows": rows}


def _loss_memory_point(tokens: int, vocab_size: int, hidden_size: int) -> dict:
    import resource

    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, grad=False):
        return torch.randn(*shape, generator=g, device=device).requires_grad_(grad)

    ws, wt = rand(vocab_size, hidden_size, grad=True), rand(vocab_size, hidden_size)
    hs, ht = rand(1, tokens, hidden_size, grad=True), rand(1, tokens, hidden_size)
    mask = torch.ones(1, tokens, device=device)

    def peak() -> int:
        if device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = peak()
    start = time.perf_counter()
    loss, _, _ = _chunked_divergence_loss(hs, ht, ws, wt, mask, 0.5)
    loss.backward()
    return {"tokens": tokens, "loss_peak_bytes": peak() - before, "seconds": time.perf_counter() - start,
            "full_logits_bytes": tokens * vocab_size * 4}


def format_loss_memory(result: dict) -> str:
    lines = [
        f"Device: {result['device']}. TRL's chunked generalized JSD (beta 0.5), forward + backward, random "
        f"hidden size {result['hidden_size']}, vocabulary {result['vocab_size']:,}; each row a fresh process.",
        "",
        "| tokens in the batch | peak added by the loss (MiB) | one fp32 tokens × vocab tensor (MiB) | seconds |",
        "|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['tokens']} | {r['loss_peak_bytes'] / 2**20:.0f} | {r['full_logits_bytes'] / 2**20:.0f} "
                     f"| {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Evaluation throughput: batched generation against a one-prompt-at-a-time loop.


def bench_eval(model_name: str = "embedded:student", n: int = 200, max_new_tokens: int = 256, batch_size: int = 250,
               seed: int = 0) -> dict:
    """Greedy tokens/s of :func:`generate_texts` (batched) and of a plain ``generate`` loop, same prompts.

    The loop is what one writes without batching: one prompt, one ``model.generate`` call, KV
    cache on. Both decode greedily, so their outputs should match token for token; the number of
    responses that differ is reported rather than assumed.
    """
    from .pipeline import load_model
    from .rollout import GenerationSettings, generate_texts
    from .tasks.problems import chain_problems

    model, tok = load_model(model_name)
    model.eval()
    prompts = [p["prompt"] for p in chain_problems(n, seed, split="eval")]
    greedy = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    generate_texts(model, tok, prompts[:8], greedy)  # warm-up

    start = time.perf_counter()
    batched = generate_texts(model, tok, prompts, greedy)
    batched_s = time.perf_counter() - start

    eos = tok.eos_token_id
    loop_ids = []
    start = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            seq = out[0, ids.shape[1]:].tolist()
            loop_ids.append(seq[: seq.index(eos)] if eos in seq else seq)
    loop_s = time.perf_counter() - start

    tokens = sum(len(g.token_ids) for g in batched)
    loop_tokens = sum(map(len, loop_ids))
    differ = sum(g.token_ids != ids for g, ids in zip(batched, loop_ids))
    return {
        "device": _device(),
        "model": model_name,
        "n_prompts": n,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "batched": {"seconds": batched_s, "tokens": tokens, "tokens_per_second": tokens / batched_s},
        "one_at_a_time": {"seconds": loop_s, "tokens": loop_tokens, "tokens_per_second": loop_tokens / loop_s},
        "speedup": (tokens / batched_s) / (loop_tokens / loop_s),
        "responses_that_differ": differ,
    }


def format_eval(result: dict) -> str:
    b, o = result["batched"], result["one_at_a_time"]
    return (
        f"Device: {result['device']}. {result['model']}, {result['n_prompts']} prompts, greedy, "
        f"≤ {result['max_new_tokens']} new tokens.\n\n"
        "| generation | seconds | tokens | tokens / s |\n|---|---:|---:|---:|\n"
        f"| batched (`generate_texts`, batch {result['batch_size']}, length-sorted) | {b['seconds']:.2f} | {b['tokens']} "
        f"| {b['tokens_per_second']:.0f} |\n"
        f"| one prompt at a time (`model.generate` loop) | {o['seconds']:.2f} | {o['tokens']} | {o['tokens_per_second']:.0f} |\n\n"
        f"Speed-up: {result['speedup']:.1f}× tokens/s; responses that differ between the two: "
        f"{result['responses_that_differ']} of {result['n_prompts']}.\n"
    )


# ---------------------------------------------------------------------------------------------
# Cost per unit of compression, from a demo run's training logs.


def bench_rollouts(model_name: str = "embedded:teacher", n: int = 256, max_new_tokens: int = 96, repeats: int = 2,
                   seed: int = 0, temperature: float = 1.0) -> dict:
    """Rollout tokens/s of the same model on ``transformers`` (:func:`generate_texts`) and on a vLLM
    engine (:class:`~mpdistill.rollout.vllm.VLLMGenerator`), same prompts, same sampling settings.

    The engine is started once (its start-up time is reported apart); then the two backends take
    turns (ABAB...) for ``repeats`` rounds and each figure is the median of its rounds. Samples are
    drawn at ``temperature``, as rollouts are, so the two backends' token counts differ a little.
    """
    from .pipeline import load_model, resolve_model
    from .rollout import GenerationSettings, generate_texts
    from .rollout.vllm import VLLMGenerator
    from .tasks.problems import chain_problems

    model, tok = load_model(model_name)
    if torch.cuda.is_available():  # each backend on the machine's accelerator, as a run would use it
        model = model.to("cuda")
    model.eval()
    prompts = [tok(p["prompt"], add_special_tokens=False)["input_ids"] for p in chain_problems(n, seed, split="eval")]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=n)
    start = time.perf_counter()
    engine = VLLMGenerator(resolve_model(model_name), seed=seed)
    engine_start_s = time.perf_counter() - start
    generate_texts(model, tok, prompts[:8], settings, seed=seed)  # warm-up, both
    engine.generate(prompts[:8], settings, list(range(8)))
    rounds: dict[str, list[dict]] = {"transformers": [], "vllm": []}
    for r in range(repeats):
        for name in ("transformers", "vllm"):
            start = time.perf_counter()
            if name == "transformers":
                gens = generate_texts(model, tok, prompts, settings, seed=seed + r)
            else:
                gens = engine.generate(prompts, settings, [seed + r * n + i for i in range(n)])
            seconds = time.perf_counter() - start
            tokens = sum(len(g.token_ids) for g in gens)
            rounds[name].append({"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds})
    result = {"device": _device(), "vllm_device": engine.device, "model": model_name, "n_prompts": n,
              "max_new_tokens": max_new_tokens, "temperature": temperature, "repeats": repeats,
              "engine_start_seconds": engine_start_s}
    for name, rows in rounds.items():
        result[name] = {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in rows), "rounds": rows}
    result["vllm_over_transformers"] = result["vllm"]["tokens_per_second"] / result["transformers"]["tokens_per_second"]
    return result


def format_rollouts(result: dict) -> str:
    t, v = result["transformers"], result["vllm"]
    return (
        f"Rollout throughput: {result['model']}, {result['n_prompts']} prompts per round, temperature "
        f"{result['temperature']:g}, ≤ {result['max_new_tokens']} new tokens, median of {result['repeats']} alternating "
        f"rounds. transformers on {result['device']}; vLLM on {result['vllm_device']} (engine start "
        f"{result['engine_start_seconds']:.0f} s, not counted).\n\n"
        "| backend | tokens / s (median) | tokens per round |\n|---|---:|---:|\n"
        f"| transformers (`generate_texts`, one batch) | {t['tokens_per_second']:.0f} | "
        f"{', '.join(str(r['tokens']) for r in t['rounds'])} |\n"
        f"| vLLM (`VLLMGenerator`) | {v['tokens_per_second']:.0f} | {', '.join(str(r['tokens']) for r in v['rounds'])} |\n\n"
        f"vLLM / transformers: {result['vllm_over_transformers']:.2f}×\n"
    )


def time_to_reduction(demo_dir: str | Path, targets: tuple[float, ...] = (0.25, 0.5)) -> dict:
    """Training seconds until each method's rollouts are ``target`` shorter than the base model's.

    Read from ``DEMO/runs/<method>/train_log.jsonl`` (mean rollout length and mean step time per
    logging window) and ``results.json`` (the base model's mean tokens on the evaluation set, and
    MPD's final reduction, added as a target). A window counts when its mean rollout length is at
    or below the target length; its steps are counted in full.
    """
    import json

    demo = Path(demo_dir)
    results = json.loads((demo / "results.json").read_text())
    base_tokens = results["methods"]["base"]["mean_tokens"]
    mpd_final = results["methods"]["mpd"]["token_reduction_vs_base"]
    all_targets = sorted({*targets, round(mpd_final, 3)})
    out = {"base_mean_tokens": base_tokens, "targets": all_targets, "methods": {}}
    # Off-policy KD is left out: its logged completions are the teacher's samples, not the student's.
    for method in ("mpd", "opd", "rewrite_sft"):
        log_path = demo / "runs" / method / "train_log.jsonl"
        if not log_path.exists():
            continue
        entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        windows = [e for e in entries if "completions/mean_length" in e and "step_time" in e]
        reached = {}
        elapsed, last_step = 0.0, 0
        for e in windows:
            elapsed += e["step_time"] * (e["step"] - last_step)
            last_step = e["step"]
            for t in all_targets:
                if str(t) not in reached and e["completions/mean_length"] <= (1 - t) * base_tokens:
                    reached[str(t)] = {"step": e["step"], "seconds": elapsed}
        out["methods"][method] = {"reached": reached, "steps": last_step, "seconds": elapsed,
                                  "final_rollout_tokens": windows[-1]["completions/mean_length"] if windows else None}
    return out


def format_time_to_reduction(result: dict) -> str:
    targets = result["targets"]
    lines = [
        f"Rollout length against the base model's {result['base_mean_tokens']:.1f} evaluation tokens; "
        "seconds of training (sum of logged step times) until a logging window's mean rollout length reaches the target.",
        "",
        "| method | " + " | ".join(f"−{100 * t:.1f}% tokens" for t in targets) + " | after all steps |",
        "|---|" + "---:|" * (len(targets) + 1),
    ]
    for method, m in result["methods"].items():
        cells = []
        for t in targets:
            hit = m["reached"].get(str(t))
            cells.append(f"{hit['seconds']:.0f} s (step {hit['step']})" if hit else "not reached")
        final = m["final_rollout_tokens"]
        cells.append(f"{m['steps']} steps, {m['seconds']:.0f} s, {final:.1f} tokens" if final else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
