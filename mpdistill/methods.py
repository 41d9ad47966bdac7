"""The training methods a recipe's ``method:`` can name, and what each one needs.

A method is a trainer class (constructed like TRL's trainers, with an :class:`~mpdistill.MPDConfig`;
given as the class, or as ``"module:Class"`` so that naming a method loads no training code) and two facts the rest of the pipeline reads instead of checking method names:

* ``rewrites``: it asks the rewriter for rewrites of the student's samples, so the rewrite
  backend is checked before the run and the ``rewrite.*`` prompt settings apply (MPD, Rewrite-SFT);
* ``teacher_text``: it trains on text the teacher wrote (rewrites or the teacher's own samples), so
  ``rewrite.require_gold`` applies and training problems need gold answers for it.

A new method is one :func:`register_method` call.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    trainer: type | str
    rewrites: bool = False
    teacher_text: bool = False

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


for _method in (
    Method("mpd", "mpdistill.trainer:MPDTrainer", rewrites=True, teacher_text=True),
    Method("opd", "mpdistill.trainer:OPDTrainer"),
    Method("offpolicy_kd", "mpdistill.trainer:OffPolicyKDTrainer", teacher_text=True),
    Method("rewrite_sft", "mpdistill.trainer:RewriteSFTTrainer", rewrites=True, teacher_text=True),
):
    register_method(_method)
