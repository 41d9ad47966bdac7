"""The training methods a recipe's ``method:`` can name, and what each one needs.

A method is a trainer class (constructed like TRL's trainers, with an :class:`~mpdistill.MPDConfig`;
given as the class, or as ``"module:Class"`` so that naming a method loads no training code) and two facts the rest of the pipeline reads instead of checking method names:

* ``rewrites``: it asks the rewriter for rewrites of the student's samples, so the rewrite
  backend is checked before the run and the ``rewrite.*`` prompt settings apply (MPD, Rewrite-SFT);
* ``teacher_text``: it trains on text the teacher wrote (rewrites or the teacher's own samples), so
  ``rewrite.require_gold`` applies and training problems need gold answers for it;
* ``self_teacher``: its teacher is the student as it starts (a frozen copy), not the recipe's ``teacher``;
* ``uses_teacher``: whether it uses a teacher at all (GRPO with a length penalty does not: the recipe's
  ``teacher`` is not loaded).

A new method is one :func:`register_method` call.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from mpdistill.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    trainer: type | str
    rewrites: bool = False
    teacher_text: bool = False
    self_teacher: bool = False
    uses_teacher: bool = True

    def trainer_class(self) -> type:
        if not isinstance(self.trainer, str):
            return self.trainer
        module, _, name = self.trainer.partition(":")
        return getattr(importlib.import_module(module), name)


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method, *, replace: bool = False) -> Method:
    return METHODS.register(method.name, method, replace=replace)


def get_method(name: str) -> Method:
    return METHODS.lookup(name)


def teacher_source(recipe) -> str | None:
    """The model a recipe's loss compares the student with: its ``teacher``, for a method whose
    teacher is the initial student (self_distill) a second, frozen copy of the ``student``, and
    None for a method without a teacher (grpo_length)."""
    method = get_method(recipe.method)
    if not method.uses_teacher:
        return None
    return recipe.student if method.self_teacher else recipe.teacher


for _method in (
    Method("mpd", "mpdistill.trainers.mpd:MPDTrainer", rewrites=True, teacher_text=True),
    Method("opd", "mpdistill.trainers.opd:OPDTrainer"),
    Method("offpolicy_kd", "mpdistill.trainers.offpolicy_kd:OffPolicyKDTrainer", teacher_text=True),
    Method("opd_mixed", "mpdistill.trainers.opd_mixed:MixedOPDTrainer", teacher_text=True),
    Method("rewrite_sft", "mpdistill.trainers.rewrite_sft:RewriteSFTTrainer", rewrites=True, teacher_text=True),
    Method("self_distill", "mpdistill.trainers.self_distill:SelfDistillTrainer", self_teacher=True),
    Method("grpo_length", "mpdistill.trainers.grpo_length:LengthPenaltyGRPOTrainer", uses_teacher=False),
):
    register_method(_method)
