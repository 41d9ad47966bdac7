"""What a training run prints: one short line per logging step, and no warnings about nothing.

The full metrics stay in train_log.jsonl; the console gets the few numbers that say how the run goes.
"""

import contextlib
import io
import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from mpdistill.trainers.checkpoints import tied_names
from mpdistill.run.recipe import load_recipe, recipe_from_dict
from mpdistill.trainers.console_log import ConsoleLog
from mpdistill.run.pipeline import build_trainer, load_model, train, training_problems

EMBEDDED_RECIPE = Path(__file__).resolve().parents[1] / "mpdistill" / "recipes" / "embedded.yaml"
STEPS = 2
# The embedded student and teacher (real rewrites, so acceptance and compression are there), made small.
OVERRIDES = {"data": {"n_train": 8},
             "training": {"steps": STEPS, "batch_size": 4, "logging_steps": 1, "save_steps": 1}}
MPD_LINE = re.compile(r"step (\d+)/2  loss (\S+)  accepted \d+% \((\d+)/4\)(  compression [\d.]+)?"
                      r"  student [\d.]+ tok  trained [\d.]+ tok  lr \d\.\de-\d\d  [\d.]+ s/step")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _captured(fn):
    """Run ``fn`` and return (stdout, stderr, log messages of transformers, warnings raised)."""
    out, err, records = io.StringIO(), io.StringIO(), _Records()
    logger = logging.getLogger("transformers")  # transformers' loggers do not propagate to the root
    logger.addHandler(records)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as raised:
            warnings.simplefilter("always")
            fn()
    finally:
        logger.removeHandler(records)
    return out.getvalue(), err.getvalue(), records.messages, raised


@pytest.fixture(scope="module")
def mpd_run(tmp_path_factory):
    """An MPD run with a checkpoint at every step, then resumed from its first checkpoint."""
    recipe = load_recipe(EMBEDDED_RECIPE, OVERRIDES)
    run = tmp_path_factory.mktemp("console") / "run"
    first = _captured(lambda: train(recipe, run))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "trainer" / f"checkpoint-{STEPS}")
    resumed = _captured(lambda: train(recipe, run, resume=True))
    return first, resumed, log


def test_each_logging_step_prints_one_short_line_with_the_methods_numbers(mpd_run):
    (out, err, _, _), _, log = mpd_run
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(lines) == STEPS, out
    matches = [MPD_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    logged = {e["step"]: e for e in log if "loss" in e}
    for m in matches:
        step = int(m.group(1))
        assert m.group(2) == f"{logged[step]['loss']:.3g}"
        # The count is of the step's samples, the rate the logged one.
        assert int(m.group(3)) == round(4 * logged[step]["mpd/acceptance_rate"])
    assert re.search(r"^done: step 2/2, 2 steps in [\d.]+ s", out, re.M), out
    # Not the metrics dict, on either stream; all of it is in the training log.
    for text in (out, err):
        assert "{'" not in text and "mpd/" not in text and "train_runtime" not in text
    full = {"mpd/acceptance_rate", "mpd/reject/answer_changed", "completions/mean_length", "grad_norm"}
    assert full <= logged[1].keys()
    # The resumed run goes on from its checkpoint's step.
    resumed = [line for line in mpd_run[1][0].splitlines() if line.startswith("step ")]
    assert len(resumed) == 1 and MPD_LINE.fullmatch(resumed[0]) and resumed[0].startswith("step 2/2"), resumed


def test_saving_checkpoints_raises_no_future_warning(mpd_run):
    (_, err, _, raised), (_, resumed_err, _, resumed_raised), _ = mpd_run
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in raised + resumed_raised
              if issubclass(w.category, FutureWarning)]
    assert future == []
    assert "FutureWarning" not in err + resumed_err


def test_resuming_says_nothing_about_the_tied_output_embedding(mpd_run):
    _, (_, err, messages, _), _ = mpd_run
    assert not [m for m in messages if "missing keys" in m], messages
    assert "lm_head" not in err


def _tiny_qwen3(tie: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                        tie_word_embeddings=tie))


def test_only_a_tied_copy_counts_as_loaded_a_really_missing_weight_is_still_reported():
    tied = _tiny_qwen3(tie=True)
    state = {k: v for k, v in tied.state_dict().items() if k not in ("lm_head.weight", "model.norm.weight")}
    missing = tied.load_state_dict(state, strict=False).missing_keys
    assert set(missing) == {"lm_head.weight", "model.norm.weight"}
    assert tied_names(tied, missing) == {"lm_head.weight"}
    # Both names missing: nothing was loaded into the shared tensor.
    assert tied_names(tied, ["lm_head.weight", "model.embed_tokens.weight"]) == set()
    untied = _tiny_qwen3(tie=False)
    state = {k: v for k, v in untied.state_dict().items() if k != "lm_head.weight"}
    assert tied_names(untied, untied.load_state_dict(state, strict=False).missing_keys) == set()


def test_a_real_missing_key_on_resume_still_warns(tiny_pair, tmp_path):
    recipe = recipe_from_dict({"method": "opd", "student": str(tiny_pair / "student"),
                               "teacher": str(tiny_pair / "teacher"), "data": {"n_train": 8},
                               "training": {"steps": 1, "batch_size": 4, "max_completion_length": 8}})
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    keys = ["lm_head.weight", "model.norm.weight"]
    _, _, messages, _ = _captured(lambda: trainer._issue_warnings_after_load(
        torch.nn.modules.module._IncompatibleKeys(keys, [])))
    assert messages == ["There were missing keys in the checkpoint model loaded: ['model.norm.weight']."]


def test_opd_lines_show_loss_and_sample_length(tiny_pair, tmp_path, capsys):
    recipe = recipe_from_dict({"method": "opd", "student": str(tiny_pair / "student"),
                               "teacher": str(tiny_pair / "teacher"), "data": {"n_train": 8},
                               "training": {"steps": 2, "batch_size": 4, "max_completion_length": 8,
                                            "logging_steps": 1}})
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    trainer.train()
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(lines) == 2, out
    for line in lines:
        assert re.fullmatch(r"step \d/2  loss \S+  student [\d.]+ tok(  cut \d+%)?  lr \S+  [\d.]+ s/step", line), line
    assert "{'" not in out + err and "completions/" not in out + err


def test_off_policy_kd_lines_name_the_teachers_samples():
    class State:
        global_step, max_steps = 5, 10

    logs = {"loss": 0.25, "completions/mean_length": 41.5, "completions/clipped_ratio": 0.0,
            "kd/kept_rate": 0.75, "learning_rate": 3e-4, "entropy": 0.3, "epoch": 1.0}
    line = ConsoleLog(bar=False).format_line(State(), logs, 2.0)
    assert line == "step 5/10  loss 0.25  teacher 41.5 tok  kept 75%  lr 3.0e-04  2.0 s/step"
