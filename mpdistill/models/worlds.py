"""The embedded worlds: a word-piece tokenizer and a tiny Qwen3 student and teacher, trained from
scratch on the chain task (:mod:`mpdistill.tasks.chain`) so the whole pipeline runs on a CPU.

Two worlds share the task and the tokenizer and differ in what their models learned (:data:`WORLDS`):

* ``concise-teacher`` (the default): the student is pretrained on verbose traces only (both routes);
  the teacher is larger, writes concise solutions (mostly route L: its own style), learns to rewrite a
  verbose trace into a concise one along the trace's own route, and has read some verbose solutions
  too (``TEACHER_MIX``). Its own answers are about 3x shorter than the student's, so any method
  that imitates it compresses.
* ``verbose-teacher``: the teacher's own solutions are as verbose as the student's, and it is clearly
  more accurate; writing concisely is what it does when asked (a rewrite prompt, or the concise
  instruction), not its native style. This is the regime MPD is for (a Qwen3-8B teacher against a
  Qwen3-1.7B student, both thinking at length).

``bootstrap()`` is deterministic from its seed. Nothing here decides what the models will later
answer: their accuracy and length on held-out problems come from sampling them.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from mpdistill.models.pretrain import pretrain
from mpdistill.tasks import chain
from mpdistill.utils.paths import ASSETS, EMBEDDED_PREFIX

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


# The verbose-teacher world. Each trace has one style, drawn before it is written, as one writer
# keeps one manner through a text: whether it re-checks every step by the inverse, and whether it
# restates every running total (each habit, once chosen, fires at almost every step; otherwise
# almost never). A model that has read such traces continues a trace in the style its start shows,
# and its most likely (greedy) answer is verbose, as its sampled ones are.
VT_HABIT_ON, VT_HABIT_OFF = 0.9, 0.05
VT_CHECK_SHARE, VT_RESTATE_SHARE = 0.6, 0.6  # of traces that re-check, that restate the total
# The student: such traces of both routes; a fifth of its examples ask for a concise answer
# ("short:") and get one, so asked it is brief (the self-distillation baseline's teacher).
VT_STUDENT_INSTRUCTED_SHARE = 0.20
# The teacher: half its examples are its own solutions (route L mostly, as in the first world), in
# the student's styles save one in ten that is concise (a large model has written both); a tenth
# answer the concise instruction; the rest rewrite a student-style trace into the concise trace
# along that trace's route: concision is what it does when asked, not how it writes.
VT_TEACHER_MIX = {"own": 0.50, "instructed": 0.10, "rewrite": 0.40}
VT_TEACHER_OWN_CONCISE = 0.10


def verbose_world_style(rng: random.Random) -> chain.Style:
    """One trace's style in the verbose-teacher world."""
    check = VT_HABIT_ON if rng.random() < VT_CHECK_SHARE else VT_HABIT_OFF
    restate = VT_HABIT_ON if rng.random() < VT_RESTATE_SHARE else VT_HABIT_OFF
    return chain.Style(check=check, restate_total=restate)


def _teacher_route(rng: random.Random) -> str:
    return "L" if rng.random() < TEACHER_OWN_ROUTE_P["L"] else "P"


def verbose_world_student_example(rng: random.Random) -> tuple[str, str]:
    problem = chain.sample_problem(rng, "train")
    route = rng.choice(chain.ROUTES)
    if rng.random() < VT_STUDENT_INSTRUCTED_SHARE:
        return problem.prompt + chain.CONCISE_INSTRUCTION, chain.concise_trace(problem, route)
    return problem.prompt, chain.verbose_trace(problem, route, rng, verbose_world_style(rng))


def verbose_world_teacher_example(rng: random.Random) -> tuple[str, str]:
    problem = chain.sample_problem(rng, "train")
    u = rng.random()
    if u < VT_TEACHER_MIX["own"]:
        route = _teacher_route(rng)
        style = chain.CONCISE if rng.random() < VT_TEACHER_OWN_CONCISE else verbose_world_style(rng)
        return problem.prompt, chain.verbose_trace(problem, route, rng, style)
    if u < VT_TEACHER_MIX["own"] + VT_TEACHER_MIX["instructed"]:
        return problem.prompt + chain.CONCISE_INSTRUCTION, chain.concise_trace(problem, _teacher_route(rng))
    route = rng.choice(chain.ROUTES)
    trace = chain.verbose_trace(problem, route, rng, verbose_world_style(rng))
    return chain.rewrite_prompt(problem.prompt, trace), chain.concise_trace(problem, route)


# ---------------------------------------------------------------------------------------------
# Bootstrap: train a world's two models and save them where its model names resolve.

SHIPPED_DIR = ASSETS / "embedded"


@dataclass(frozen=True)
class BootstrapPlan:
    """How a world's models are trained.

    Both models are checked every ``check_every`` steps on ``validation_n`` problems of the
    validation split (never the evaluation split), sampled at ``check_temperature`` (0: greedy).
    The student stops at the first check where its accuracy reaches ``student_stop_accuracy``: an
    under-trained small model, right most of the time but not always. The teacher stops once it
    solves at least ``teacher_stop_accuracy`` and rewrites at least ``teacher_stop_rewrite`` of
    held-out verbose traces exactly into the concise trace along the same route. Each runs at most
    ``*_max_steps``.
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
    check_temperature: float = 1.0
    # The teacher's checks, when they should be sparser than the student's (None: the same).
    teacher_first_check: int | None = None
    teacher_check_every: int | None = None


@dataclass(frozen=True)
class World:
    """One embedded world: how its student and teacher learn, how they are trained, where they live.

    Its models are named ``embedded:<prefix>student`` and ``embedded:<prefix>teacher`` (the default
    world's prefix is empty) and are kept in ``assets/embedded/<name>/``; its shipped recipe is
    ``recipe`` (``mpdistill recipes``).
    """

    name: str
    summary: str
    student_example: Callable[[random.Random], tuple[str, str]]
    teacher_example: Callable[[random.Random], tuple[str, str]]
    plan: BootstrapPlan
    prefix: str
    recipe: str
    student_shape: ModelShape = STUDENT_SHAPE
    teacher_shape: ModelShape = TEACHER_SHAPE

    def model_name(self, role: str) -> str:
        return f"{EMBEDDED_PREFIX}{self.prefix}{role}"


DEFAULT_WORLD = "concise-teacher"
WORLDS: dict[str, World] = {
    "concise-teacher": World(
        name="concise-teacher",
        summary="the teacher natively writes about 3x fewer tokens than the student; imitating it compresses",
        student_example=student_example, teacher_example=teacher_example, plan=BootstrapPlan(), prefix="",
        recipe="embedded"),
    "verbose-teacher": World(
        name="verbose-teacher",
        summary="the teacher writes about as many tokens as the student and is more accurate; it is concise "
                "only when asked",
        student_example=verbose_world_student_example, teacher_example=verbose_world_teacher_example,
        # Checked at greedy decoding, the study's headline: the student stops once it is right on 65% of
        # validation problems (checked every 50 steps, so it lands in the 55-80% band).
        plan=BootstrapPlan(student_stop_accuracy=0.65, teacher_stop_accuracy=0.97, first_check=300, check_every=50,
                           check_temperature=0.0, teacher_first_check=1000, teacher_check_every=250),
        prefix="verbose-teacher/", recipe="embedded-verbose-teacher"),
}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ValueError(f"unknown embedded world {name!r}; worlds: {', '.join(WORLDS)}")
    return WORLDS[name]


def world_of(model_name: str) -> tuple[World, str] | None:
    """The world and role (student/teacher) an ``embedded:...`` name refers to, or None."""
    if not model_name.startswith(EMBEDDED_PREFIX):
        return None
    rest = model_name[len(EMBEDDED_PREFIX):]
    for world in WORLDS.values():
        role = rest[len(world.prefix):] if rest.startswith(world.prefix) else None
        if role in STAGES and (world.prefix or "/" not in rest):
            return world, role
    return None


def validation_scores(model, tokenizer, n: int, seed: int, rewrites: bool, temperature: float = 1.0) -> dict:
    """Accuracy (and rewrite exactness) on validation-split problems, sampled at ``temperature`` (0: greedy)."""
    from mpdistill.rollout import GenerationSettings, generate_texts

    rng = random.Random(seed)
    problems = [chain.sample_problem(rng, "validation") for _ in range(n)]
    gens = generate_texts(
        model, tokenizer, [p.prompt for p in problems],
        GenerationSettings(max_new_tokens=256, temperature=temperature, batch_size=n), seed=seed
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
            GenerationSettings(max_new_tokens=128, temperature=temperature, batch_size=n),
            seed=seed,
        )
        scores["rewrite_exact"] = sum(
            g.text == chain.concise_trace(p, r) for g, p, r in zip(gens, problems, routes)
        ) / n
    return scores


def world_dir(world: str = DEFAULT_WORLD) -> Path:
    """Where a world's models live: shipped with the package, else bootstrapped into the cache."""
    shipped = SHIPPED_DIR / world
    if (shipped / "teacher" / "config.json").exists():
        return shipped
    cache = Path.home() / ".cache" / "mpdistill" / "embedded" / world
    if not (cache / "teacher" / "config.json").exists():
        log.warning("embedded models of the %s world not found; bootstrapping them into %s (one-time, minutes on a "
                    "CPU)", world, cache)
        bootstrap(cache, get_world(world).plan, world=world)
    return cache


def embedded_dir() -> Path:
    """The default world's folder (``embedded:student``, ``embedded:teacher``)."""
    return world_dir(DEFAULT_WORLD)


def _save(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    from mpdistill.models.record import write_record

    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    write_record(path, **EMBEDDED_RECORD)


# How the embedded models read: chain problems as plain text ("Q:..."), answers "A:<digit>", within
# the demo's evaluation budget (recipes/embedded.yaml, eval.max_new_tokens).
EMBEDDED_RECORD = {"task": "chain", "prompt_template": "{problem}", "prompt_style": "plain", "max_new_tokens": 256}


STAGES = ("student", "teacher")


def bootstrap(
    out_dir: str | Path,
    plan: BootstrapPlan | None = None,
    progress: Callable[[str, int, float, dict | None], None] | None = None,
    only: tuple[str, ...] = STAGES,
    device: str | None = None,
    world: str = DEFAULT_WORLD,
) -> dict:
    """Train a world's student and teacher from scratch, deterministically from ``plan.seed``
    (default plan: the world's own).

    Writes ``out_dir/student`` and ``out_dir/teacher``, each loadable with ``from_pretrained`` and
    holding a ``bootstrap.json`` (world, plan, validation checks, final loss, wall time, device).
    ``only`` trains one of the two, so both can be trained by two processes (or machines) at once.
    """
    w = get_world(world)
    plan = plan or w.plan
    unknown = set(only) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown bootstrap stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    manifest: dict = {"world": w.name, "plan": asdict(plan), "stages": {}}
    for stage in (s for s in STAGES if s in only):
        start = time.time()
        seed = plan.seed + STAGES.index(stage)
        shape = w.student_shape if stage == "student" else w.teacher_shape
        model = make_model(shape, tokenizer, seed).to(device)
        make = w.student_example if stage == "student" else w.teacher_example
        max_steps = plan.student_max_steps if stage == "student" else plan.teacher_max_steps
        checks: list[dict] = []

        def check(step: int, _name=stage, _model=model, _checks=checks) -> dict:
            scores = validation_scores(_model, tokenizer, plan.validation_n, plan.seed + 2, _name == "teacher",
                                       temperature=plan.check_temperature)
            _model.train()
            _checks.append({"step": step, **scores})
            if progress is not None:
                progress(_name, step, float("nan"), scores)
            return scores

        first, every = plan.first_check, plan.check_every
        if stage == "teacher":
            first, every = plan.teacher_first_check or first, plan.teacher_check_every or every

        def should_stop(step: int, _name=stage, _first=first, _every=every) -> bool:
            if step < _first or (step - _first) % _every:
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
            "shape": {k: getattr(model.config, k) for k in asdict(shape)},
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
        record.write_text(json.dumps({"world": w.name, "plan": asdict(plan), **info}, indent=2) + "\n",
                          encoding="utf-8")
    return manifest
