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
    "MPDConfig": "mpdistill.trainers.config",
    "MPDTrainer": "mpdistill.trainers.mpd",
    "OPDTrainer": "mpdistill.trainers.opd",
    "OffPolicyKDTrainer": "mpdistill.trainers.offpolicy_kd",
    "RewriteSFTTrainer": "mpdistill.trainers.rewrite_sft",
    "SelfDistillTrainer": "mpdistill.trainers.self_distill",
    "MixedOPDTrainer": "mpdistill.trainers.opd_mixed",
    "LengthPenaltyGRPOTrainer": "mpdistill.trainers.grpo_length",
    "Rewriter": "mpdistill.rewriting.rewrite",
    "RewriteOutput": "mpdistill.rewriting.rewrite",
    "TransformersRewriter": "mpdistill.rewriting.rewrite",
    "VLLMRewriter": "mpdistill.rewriting.rewrite",
    "OpenAIRewriter": "mpdistill.rewriting.served",
    "RewriterBackend": "mpdistill.rewriting.backends",
    "register_backend": "mpdistill.rewriting.backends",
    "Method": "mpdistill.trainers.methods",
    "register_method": "mpdistill.trainers.methods",
    "Task": "mpdistill.tasks",
    "get_task": "mpdistill.tasks",
    "register_task": "mpdistill.tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mpdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
