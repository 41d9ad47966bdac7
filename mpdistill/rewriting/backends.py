"""Where rewrites come from: the registry of rewriter backends.

A backend turns a run's rewrite settings (a recipe's ``rewrite:`` section, ``MPDConfig``'s
``rewrite_*`` fields, or ``mpdistill rewrite``'s options: all one :class:`~mpdistill.rewriting.settings.RewriteConfig`)
and the teacher into rewriters. Training, ``mpdistill rewrite`` and ``--dry-run`` all go through
:func:`get_backend`, so a new backend is one :func:`register_backend` call:

* ``transformers``: the local teacher writes the rewrites (the default);
* ``vllm``: an in-process vLLM engine (the teacher, or ``rewrite.model``);
* ``openai``: an OpenAI-compatible server (``vllm serve``, SGLang, a hosted API) at ``rewrite.base_url``.

Whichever writes them, the local teacher is the model whose logits the student is trained against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mpdistill.errors import ConfigError
from mpdistill.registry import Registry
from mpdistill.rewriting.rewrite import Rewriter, rewrite_settings_from
from mpdistill.rewriting.settings import RewriteConfig
from mpdistill.tasks.prompts import teacher_template_kwargs


@dataclass
class Teacher:
    """The teacher as a backend may use it."""

    name: str  # its name or path, as given (``embedded:teacher``, a folder, a Hub name)
    tokenizer: object | None = None  # renders and counts rewrite prompts (None: the backend loads it)
    model: object | None = None  # the loaded teacher (the transformers backend writes with it)
    bf16: bool = False
    trust_remote_code: bool = False


@dataclass(frozen=True)
class RewriterBackend:
    """One way of producing rewrites.

    ``make(config, teacher, seed)`` loads what the backend needs once and returns a function from a
    sampling seed to a :class:`Rewriter` (``mpdistill rewrite`` makes one per chunk of rows, so a
    chunk rewritten again gets the same rewrites). ``check(config, teacher_name, contact)`` raises
    :class:`ConfigError` for what would fail, before any model loads (``contact``: reach servers).
    ``describe`` is the ``--dry-run`` line.
    """

    name: str
    make: Callable[[RewriteConfig, Teacher, int], Callable[[int], Rewriter]]
    describe: Callable[[RewriteConfig, str], str]
    check: Callable[[RewriteConfig, str, bool], None] | None = None
    # The local teacher's chat template renders the prompts (its thinking switch applies).
    local_template: bool = True
    # Writes with the loaded teacher's weights (``Teacher.model`` must be given).
    uses_teacher_weights: bool = False
    # Writes on hardware of its own, answering in the background: rewrite.overlap can hide it, and
    # rewrite.model names the server's model (not a path).
    served: bool = False
    # Settings it cannot run without (each named in the error), and rules of its own on the others:
    # ``settings_check(config)`` raises ValueError naming the recipe key.
    required: tuple[str, ...] = ()
    settings_check: Callable[[RewriteConfig], None] | None = None


BACKENDS: Registry[RewriterBackend] = Registry("rewriter backend")


def register_backend(backend: RewriterBackend, *, replace: bool = False) -> RewriterBackend:
    return BACKENDS.register(backend.name, backend, replace=replace)


def get_backend(name: str) -> RewriterBackend:
    return BACKENDS.lookup(name)


def settings_problems(config: RewriteConfig) -> list[str]:
    """What the chosen backend refuses in these settings, one line each in recipe keys (``rewrite.x``):
    an unknown backend, a setting it requires left out, an overlap it cannot give, its own rules. A
    recipe, ``MPDConfig`` and ``mpdistill rewrite`` each check their settings with this, once."""
    if config.backend not in BACKENDS:
        return [f"rewrite.backend: unknown rewriter backend {config.backend!r}; known: {BACKENDS.known()}"]
    backend = BACKENDS[config.backend]
    problems = [f"rewrite.{key} is required when rewrite.backend is {backend.name!r}"
                for key in backend.required if not getattr(config, key)]
    if config.overlap and not backend.served:
        served = " or ".join(name for name, b in BACKENDS.items() if b.served)
        problems.append(f"rewrite.overlap needs rewrite.backend: {served} (a rewriter on its own hardware); the "
                        f"{backend.name!r} backend writes on the training hardware, so nothing can overlap")
    if config.teacher_enable_thinking is not None and not backend.local_template and not config.send_chat_template_kwargs:
        problems.append("rewrite.teacher_enable_thinking is sent to a served teacher as chat_template_kwargs, which "
                        "rewrite.send_chat_template_kwargs: false turns off; keep one of the two")
    if backend.settings_check is not None:
        try:
            backend.settings_check(config)
        except ValueError as err:
            problems.append(str(err))
    return problems


def build_rewriter(config: RewriteConfig, teacher: Teacher, seed: int) -> Rewriter:
    """The rewriter a training run uses: the backend's, seeded with the run's seed."""
    return get_backend(config.backend).make(config, teacher, seed)(seed)


def template_kwargs(config: RewriteConfig, tokenizer) -> dict | None:
    """The teacher's chat-template switches (see :func:`mpdistill.tasks.prompts.teacher_template_kwargs`)."""
    return teacher_template_kwargs(chat=config.use_chat_template, thinking=config.teacher_enable_thinking,
                                   tokenizer=tokenizer, send_to_server=config.send_chat_template_kwargs)


def _teacher_tokenizer(teacher: Teacher, name: str | None = None):
    from mpdistill.models.loading import load_tokenizer

    if teacher.tokenizer is not None and (name is None or name == teacher.name):
        return teacher.tokenizer
    return load_tokenizer(name or teacher.name, trust_remote_code=teacher.trust_remote_code)


# --- transformers: the local teacher -------------------------------------------------------------

def _make_local(config: RewriteConfig, teacher: Teacher, seed: int):
    from mpdistill.rewriting.rewrite import TransformersRewriter

    if teacher.model is None:
        raise ConfigError("the transformers rewriter writes with the loaded teacher, and none was given")
    tokenizer = _teacher_tokenizer(teacher)
    options = dict(use_chat_template=config.use_chat_template, chat_template_kwargs=template_kwargs(config, tokenizer))
    return lambda s: TransformersRewriter(teacher.model, tokenizer, rewrite_settings_from(config).generation, seed=s, **options)


register_backend(RewriterBackend(
    "transformers", _make_local, describe=lambda config, teacher: f"local teacher ({teacher})",
    uses_teacher_weights=True))


# --- vllm: an in-process engine ------------------------------------------------------------------

def _make_vllm(config: RewriteConfig, teacher: Teacher, seed: int):
    from mpdistill.models.loading import model_path
    from mpdistill.rewriting.rewrite import VLLMRewriter
    from mpdistill.rollout.vllm import VLLMGenerator

    name = config.model or teacher.name
    engine = VLLMGenerator(model_path(name), seed=seed, tensor_parallel_size=config.tensor_parallel_size,
                           gpu_memory_utilization=config.gpu_memory_utilization,
                           dtype="bfloat16" if teacher.bf16 else "auto")
    tokenizer = _teacher_tokenizer(teacher, name)
    options = dict(use_chat_template=config.use_chat_template, chat_template_kwargs=template_kwargs(config, tokenizer))
    return lambda s: VLLMRewriter(engine, tokenizer, rewrite_settings_from(config).generation, seed=s, **options)


def _check_vllm(config: RewriteConfig, teacher_name: str, contact: bool) -> None:
    from mpdistill.models.loading import resolve_model
    from mpdistill.rollout.vllm import check_engine

    name = config.model or teacher_name
    check_engine("rewrite.backend vllm", config.tensor_parallel_size, tp_key="rewrite.tensor_parallel_size",
                 models={f"the rewriting model {name!r}": resolve_model(name)},
                 without="set rewrite.backend: transformers to rewrite with the local teacher")


register_backend(RewriterBackend(
    "vllm", _make_vllm, check=_check_vllm,
    describe=lambda config, teacher: f"in-process vLLM engine: {config.model or teacher} (tensor parallel "
                                     f"{config.tensor_parallel_size}, {config.gpu_memory_utilization or 'the default share'} of GPU memory)"))


# --- openai: a served model ----------------------------------------------------------------------

def served_rewriter(config: RewriteConfig, seed: int):
    from mpdistill.rewriting.served import OpenAIRewriter

    return OpenAIRewriter(
        config.base_url, config.model, api_key_env=config.api_key_env, chat=config.use_chat_template,
        temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or None,
        max_tokens=config.max_new_tokens, max_concurrency=config.max_concurrency, timeout_s=config.timeout_s,
        max_retries=config.max_retries, deadline_s=config.deadline_s, seed=seed,
        chat_template_kwargs=template_kwargs(config, None), extra_body=config.extra_body,
    )


def _make_served(config: RewriteConfig, teacher: Teacher, seed: int):
    served = served_rewriter(config, seed)  # one client: its request counts cover the whole run
    return lambda s: served


def _check_served(config: RewriteConfig, teacher_name: str, contact: bool) -> None:
    if not contact:
        return
    from mpdistill.rewriting.served import check_endpoint

    # It answers, serves the model, and accepts a request of the run's shape.
    check_endpoint(config.base_url, min(config.timeout_s, 30.0), model=config.model, api_key_env=config.api_key_env)
    served_rewriter(config, 0).preflight()


def _describe_served(config: RewriteConfig, teacher: str) -> str:
    key = f", API key from ${config.api_key_env}" if config.api_key_env else ""
    return f"served: {config.model} at {config.base_url}{key}"


def _served_settings(config: RewriteConfig) -> None:
    from mpdistill.rewriting.served import REQUEST_FIELDS

    taken = sorted(set(config.extra_body) & set(REQUEST_FIELDS))
    if taken:
        raise ValueError(f"rewrite.extra_body: {taken[0]!r} is set from the recipe's own keys; extra_body may only add "
                         "other fields")


register_backend(RewriterBackend("openai", _make_served, check=_check_served, describe=_describe_served,
                                 local_template=False, served=True, required=("base_url", "model"),
                                 settings_check=_served_settings))
