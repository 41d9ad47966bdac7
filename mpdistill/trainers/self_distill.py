"""``self_distill``: on-policy self-distillation, the student's frozen (or refreshed) copy as the
teacher, reading the problem with a concise instruction."""

from __future__ import annotations

from transformers import TrainerCallback

from mpdistill.errors import ConfigError
from mpdistill.trainers.opd import OPDTrainer
from mpdistill.trainers.teacher_prompts import TeacherPrompts, concise_instruction, teacher_prompt


class TeacherRefresh(TrainerCallback):
    """Every ``every`` optimizer steps, the teacher becomes ``(1 - rate) * teacher + rate * student``
    (``rate`` 1: a copy), through TRL's ``SyncRefModelCallback.sync_target_model`` (which gathers
    ZeRO-3 shards). The refreshed teacher is saved in each checkpoint (see ``ResumableTraining``)."""

    def __init__(self, trainer, every: int, rate: float) -> None:
        self.trainer, self.every, self.rate = trainer, every, rate

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            from trl.trainer.callbacks import SyncRefModelCallback

            t = self.trainer
            SyncRefModelCallback.sync_target_model(t.accelerator.unwrap_model(t.model), t.local_teacher(), self.rate)


class SelfDistillTrainer(TeacherPrompts, OPDTrainer):
    """Self-distillation with a concise instruction (OPSDC-style): OPD whose teacher is the frozen
    initial student reading the prompt plus ``args.teacher_instruction`` (the task's "be concise"
    instruction when unset). The student samples without the instruction; the divergence runs on its
    sample's tokens, each scored by the teacher after its own, instructed, prompt.

    ``args.teacher_sync_steps`` refreshes the teacher from the student every that many steps
    (OPSDC's main setting): the instructed teacher then improves as the student does.
    """

    _name = "Self-distillation"

    @property
    def _card_summary(self) -> str:
        teacher = ("its own frozen initial copy" if self.args.teacher_sync_steps is None else
                   f"a copy of itself refreshed every {self.args.teacher_sync_steps} steps")
        return (f"The student samples a solution and is trained by token-level KL against {teacher}, which reads "
                "the problem with an instruction to be concise (on-policy self-distillation).")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instruction = concise_instruction(self.args, self.task)
        if self.local_teacher() is self.accelerator.unwrap_model(self.model):
            raise ConfigError("self-distillation needs a frozen copy of the student as teacher_model, not the student "
                              "being trained (pass the student's name or a second loaded copy)")
        a = self.args
        if a.teacher_sync_steps is not None:
            if hasattr(self.model, "peft_config"):
                raise ConfigError("training.teacher_sync_steps copies the student's weights into the teacher, which a "
                                  "LoRA student does not train all of: leave training.lora out, or the refresh")
            if getattr(self, "is_fsdp_enabled", False) or self.is_deepspeed_enabled:
                raise ConfigError("training.teacher_sync_steps is not available with sharded models (FSDP, DeepSpeed): "
                                  "a checkpoint could not hold the refreshed teacher whole")
            self.add_callback(TeacherRefresh(self, a.teacher_sync_steps, a.teacher_update_rate))

    def checkpoint_modules(self) -> dict:
        # A refreshed teacher is no longer the initial student: a resumed run must find it as it was.
        return {} if self.args.teacher_sync_steps is None else {"teacher": self.local_teacher()}

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        return self._attach_teacher_prompts(out, [teacher_prompt(row["prompt"], self.instruction) for row in inputs])
