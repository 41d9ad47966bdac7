"""Numerical faults: a NaN/inf loss or gradient skips its step; too many in a row stop the run resumably."""

import json
import math

import pytest
import torch

from mpdistill.trainers.checkpoints import latest_checkpoint
from mpdistill.run.recipe import recipe_from_dict
from mpdistill.trainers.nonfinite import NonFiniteGuard, NonFiniteHalt, gradients_finite
from mpdistill.run.resume import prepare_resume
from mpdistill.run.pipeline import build_trainer, load_model, train, training_problems


def _recipe(tiny_pair, **training):
    return recipe_from_dict(
        {
            "method": "opd",
            "student": str(tiny_pair / "student"),
            "teacher": str(tiny_pair / "teacher"),
            "data": {"n_train": 16},
            "training": {"steps": 5, "batch_size": 2, "max_completion_length": 8, "logging_steps": 1,
                         "learning_rate": 1e-2, **training},
        }
    )


class Faults:
    """Makes the loss (or one gradient) NaN/inf at chosen steps; records the weights before each step."""

    def __init__(self, trainer, loss_steps=(), grad_steps=()):
        self.trainer, self.loss_steps, self.grad_steps = trainer, set(loss_steps), set(grad_steps)
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        original = trainer.compute_loss

        def compute_loss(model, inputs, *args, **kwargs):
            step = trainer.state.global_step
            self.before.setdefault(step, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
            loss = original(model, inputs, *args, **kwargs)
            return loss * math.nan if step in self.loss_steps else loss

        trainer.compute_loss = compute_loss
        param = next(p for p in trainer.model.parameters() if p.requires_grad)
        param.register_hook(lambda g: g * math.inf if trainer.state.global_step in self.grad_steps else g)


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_steps_are_skipped_and_logged(tiny_pair, tmp_path):
    recipe = _recipe(tiny_pair)
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    faults = Faults(trainer, loss_steps={1}, grad_steps={3})
    trainer.train()
    after = _weights(trainer)

    assert trainer.state.global_step == 5  # the run went on
    assert _same(faults.before[1], faults.before[2]), "a NaN-loss step changed the weights"
    assert _same(faults.before[3], faults.before[4]), "an inf-gradient step changed the weights"
    assert not _same(faults.before[0], faults.before[1]), "a good step must still train"
    assert not _same(faults.before[4], after)
    assert all(torch.isfinite(v).all() for v in after.values())
    # Every optimizer state entry stays finite too (AdamW's moments would carry a NaN forever).
    for state in trainer.optimizer.state.values():
        assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NonFiniteGuard))
    assert guard.skipped == [1, 3] and guard.halted_at is None
    logged = [e["nonfinite/skipped"] for e in trainer.state.log_history if "nonfinite/skipped" in e]
    assert logged == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_too_many_in_a_row_stop_with_a_resumable_checkpoint(tiny_pair, tmp_path, monkeypatch):
    recipe = _recipe(tiny_pair, steps=8, max_nonfinite_steps=2)
    run = tmp_path / "run"
    captured = {}
    original = build_trainer

    def build_with_faults(*args, **kwargs):
        trainer = original(*args, **kwargs)
        captured["faults"] = Faults(trainer, loss_steps={2, 3, 4, 5, 6})
        captured["trainer"] = trainer
        return trainer

    monkeypatch.setattr("mpdistill.run.pipeline.build_trainer", build_with_faults)
    with pytest.raises(NonFiniteHalt, match=r"stopped at step 5: more than 2 steps in a row had a NaN/inf") as err:
        train(recipe, run)
    assert "--resume" in str(err.value)
    trainer, faults = captured["trainer"], captured["faults"]
    assert trainer.state.global_step == 5  # steps 2, 3, 4 skipped: the third in a row past the limit of 2 stops
    checkpoint = latest_checkpoint(run / "trainer")
    assert checkpoint is not None and checkpoint.name == "checkpoint-5"
    # The checkpoint holds the last good weights: those from before the first bad step.
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint / "model.safetensors"))
    assert all(torch.equal(saved[k], faults.before[2][k]) for k in saved)
    assert not (run / "model").exists()
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [e["nonfinite/skipped"] for e in log if "nonfinite/skipped" in e] == [0.0, 0.0, 1.0, 1.0, 1.0]
    # The run folder resumes from there once the cause is gone.
    assert prepare_resume(recipe, run) == checkpoint
    monkeypatch.setattr("mpdistill.run.pipeline.build_trainer", original)
    model_dir = train(recipe, run, resume=True)
    assert (model_dir / "model.safetensors").exists()


def test_gradients_finite():
    model = torch.nn.Linear(3, 2)
    assert gradients_finite(model)  # no gradients yet
    model(torch.ones(1, 3)).sum().backward()
    assert gradients_finite(model)
    model.bias.grad[0] = math.inf
    assert not gradients_finite(model)
    model.bias.grad[0] = math.nan
    assert not gradients_finite(model)
