"""Mixed-Policy Distillation on TRL: a student's samples, rewritten concisely by a teacher, verified,
and trained on by token-level divergence against the teacher.

``from mpdistill import MPDConfig, MPDTrainer`` is the whole API a TRL script needs; the baselines'
trainers, the rewriter backends and the tasks are here too. Names load on first use, so importing
the package (and the ``mpdistill`` command) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "MPDConfig": "mpd_config",
    "MPDTrainer": "trainer",
    "OPDTrainer": "trainer",
    "OffPolicyKDTrainer": "trainer",
    "RewriteSFTTrainer": "trainer",
    "SelfDistillTrainer": "trainer",
    "MixedOPDTrainer": "trainer",
    "LengthPenaltyGRPOTrainer": "length_rl",
    "Rewriter": "rewrite",
    "RewriteOutput": "rewrite",
    "TransformersRewriter": "rewrite",
    "VLLMRewriter": "rewrite",
    "OpenAIRewriter": "served_rewriter",
    "RewriterBackend": "rewriters",
    "register_backend": "rewriters",
    "Method": "methods",
    "register_method": "methods",
    "Task": "tasks",
    "get_task": "tasks",
    "register_task": "tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mpdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
