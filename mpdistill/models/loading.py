"""Loading models and tokenizers, and what loading may do.

``embedded:student`` / ``embedded:teacher`` name the bundled tiny models (and
``embedded:verbose-teacher/student`` / ``.../teacher`` those of the second world, see :mod:`mpdistill.models.worlds`); anything else is a local
folder or a Hugging Face name. Only ``safetensors`` weights and no Python from the checkpoint,
unless a recipe or flag opts in (``security.*``, ``--allow-pickle-checkpoints``,
``--trust-remote-code``): pickled weights and a model's own code both run code when loaded. A
folder whose tokenizer is missing or belongs to another model is refused before anything trains.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mpdistill.errors import ConfigError
from mpdistill.utils.paths import EMBEDDED_PREFIX, looks_local


def resolve_model(name: str) -> str:
    """A local path for ``name``: the embedded models, an existing folder, or a Hub name as is."""
    if name.startswith(EMBEDDED_PREFIX):
        from mpdistill.models.worlds import WORLDS, world_dir, world_of

        found = world_of(name)
        if found is None:
            known = ", ".join(w.model_name(role) for w in WORLDS.values() for role in ("student", "teacher"))
            raise ConfigError(f"unknown embedded model {name!r}; the embedded models are {known}")
        world, role = found
        return str(world_dir(world.name) / role)
    return name


def model_path(name: str) -> str:
    """:func:`resolve_model`, refusing a local folder that does not exist (before anything loads)."""
    path = resolve_model(name)
    if looks_local(path) and not Path(path).expanduser().is_dir():
        raise ConfigError(f"model {name!r}: no such folder {path}")
    return path


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
OPT_IN = {
    "allow_pickle": "security.allow_pickle_checkpoints: true in the recipe (mpdistill eval / rewrite: --allow-pickle-checkpoints)",
    "trust_remote_code": "security.trust_remote_code: true in the recipe (mpdistill eval / rewrite: --trust-remote-code)",
}


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A model's tokenizer alone (left padding, as for generation)."""
    path = model_path(name)
    folder = Path(path).expanduser()
    local = looks_local(path) and folder.is_dir()
    try:
        tok = AutoTokenizer.from_pretrained(path, padding_side="left", trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if local and not _tokenizer_files(folder):
            raise ConfigError(_no_tokenizer_files(name)) from None
        raise ConfigError(_load_error(name, path, err, "the tokenizer of")) from None
    problem = _unreal_tokenizer(tok, folder if local else None)
    if problem:
        if local and not _tokenizer_files(folder):
            raise ConfigError(_no_tokenizer_files(name))
        where = f"copy the tokenizer files of the model it was trained from into {path}" if local \
            else "use a model published with its tokenizer"
        raise ConfigError(f"the tokenizer of {name!r} {problem}: its tokenizer files are incomplete or belong to "
                          f"another model; {where}")
    return tok


# Files a tokenizer is read from (transformers' vocab_files_names, sentencepiece and tiktoken models).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "merges.txt", "*.model", "*.tiktoken", "tekken.json", "bpe.codes")


def _tokenizer_files(folder: Path) -> list[str]:
    return sorted({p.name for pattern in TOKENIZER_FILES for p in folder.glob(pattern) if p.is_file()})


def _no_tokenizer_files(name: str) -> str:
    return (f"model {name!r}: its folder has no tokenizer files ({', '.join(TOKENIZER_FILES[:6])}, ...): save the "
            "tokenizer with the model (tokenizer.save_pretrained(folder)) or copy it from the base model")


def _unreal_tokenizer(tok, folder: Path | None) -> str | None:
    """Why ``tok`` cannot be a model's real tokenizer, or None. Without tokenizer files transformers 5
    builds one from the model type alone (Qwen, GPT-2: 1 token that encodes any text to nothing;
    Gemma: 5 tokens) instead of failing."""
    import json

    try:
        if not tok("The answer is 42.", add_special_tokens=False)["input_ids"]:
            return f"turns text into no tokens (it has {len(tok)} in all)"
    except Exception:  # a tokenizer that cannot encode the probe is judged by its size alone
        pass
    config = folder / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading the model reports a broken config
    vocab = data.get("vocab_size")
    if vocab is None and isinstance(data.get("text_config"), dict):
        vocab = data["text_config"].get("vocab_size")
    # Real vocabularies are padded by a few percent at most; a tokenizer under half the size is not the model's.
    if isinstance(vocab, int) and not isinstance(vocab, bool) and 2 * len(tok) < vocab:
        return f"has {len(tok)} tokens but the model's config.json has vocab_size {vocab}"
    return None


def load_model(
    name: str, *, dtype: torch.dtype = torch.float32, allow_pickle: bool = False, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer. Only ``safetensors`` weights and no code shipped with the model, unless opted in:
    pickled weights and a model's own Python both run code from the checkpoint when loaded."""
    path = model_path(name)
    tok = load_tokenizer(name, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=None if allow_pickle else True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(_load_error(name, path, err, "model", allow_pickle=allow_pickle)) from None
    return model, tok


def _load_error(name: str, path: str, err: Exception, what: str, *, allow_pickle: bool = True) -> str:
    folder = Path(path).expanduser()
    if not allow_pickle and folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            return (
                f"model {name!r} has only pickled weights ({', '.join(pickled)}): loading pickle can run code from "
                f"the file, so it is refused. Convert the checkpoint to safetensors, or opt in with {OPT_IN['allow_pickle']}"
            )
    if "trust_remote_code" in str(err):
        return (
            f"{what} {name!r} needs its own Python code from the checkpoint (trust_remote_code), which is off by "
            f"default. Read that code first; then opt in with {OPT_IN['trust_remote_code']}"
        )
    return f"cannot load {what} {name!r}: {err}"


def check_compatible(student_name: str, s_tok, s_model, teacher_name: str, t_tok, t_model) -> None:
    """Token-level divergence needs one vocabulary: same tokenizer pieces and same logit width."""
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    if s_vocab != t_vocab:
        only_s = len(set(s_vocab) - set(t_vocab))
        only_t = len(set(t_vocab) - set(s_vocab))
        raise ConfigError(
            f"teacher {teacher_name!r} does not share the vocabulary of student {student_name!r} "
            f"({len(s_vocab)} vs {len(t_vocab)} tokens; {only_s} only in the student's, {only_t} only in the "
            "teacher's). MPD compares next-token distributions, so both must use the same tokenizer."
        )
    sv, tv = s_model.config.get_text_config().vocab_size, t_model.config.get_text_config().vocab_size
    if sv != tv:
        raise ConfigError(f"student {student_name!r} has vocab_size {sv} but teacher {teacher_name!r} has {tv}")
