"""The two competitor baselines: self-distillation with a concise instruction (OPSDC-style) and GRPO
with a length penalty, on the shipped embedded student (a real model that follows the instruction)."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.errors import ConfigError
from mpdistill.run.recipe import load_recipe
from mpdistill.trainers.grpo_length import grpo_config
from mpdistill.models.loading import load_model
from mpdistill.run.pipeline import train, training_arguments
from mpdistill.recipes import shipped_path
from mpdistill.rollout import GenerationSettings, generate_texts
from mpdistill.tasks import chain
from mpdistill.tasks.problems import chain_problems
from mpdistill.trainers.self_distill import SelfDistillTrainer
from mpdistill.trainers.teacher_prompts import teacher_prompt

TINY = {"training": {"steps": 2, "batch_size": 8, "logging_steps": 1}, "data": {"n_train": 16}}


def _recipe(method, **training):
    return load_recipe(shipped_path("embedded"), {**TINY, "method": method,
                                                  "training": {**TINY["training"], **training}})


def test_the_teacher_prompt_adds_the_instruction_after_the_problem():
    assert teacher_prompt("Q:1+2\n", "short:\n") == "Q:1+2\nshort:\n"
    assert teacher_prompt("What is 2+2?", "Be brief.") == "What is 2+2?\nBe brief."
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2+2?"}]
    assert teacher_prompt(chat, "Be brief.") == [chat[0], {"role": "user", "content": "What is 2+2?\n\nBe brief."}]
    assert chat[1]["content"] == "What is 2+2?"  # the student's prompt is left as it was
    with pytest.raises(ValueError, match="no text user turn"):
        teacher_prompt([{"role": "system", "content": "s"}], "Be brief.")


def test_the_embedded_student_is_concise_when_asked_and_verbose_when_not():
    model, tok = load_model("embedded:student")
    problems = chain_problems(48, 0, split="validation")
    settings = GenerationSettings(max_new_tokens=256, temperature=0.0, batch_size=48)
    lengths, right = {}, {}
    for name, suffix in (("plain", ""), ("asked", chain.CONCISE_INSTRUCTION)):
        ids = [tok(p["prompt"] + suffix, add_special_tokens=False)["input_ids"] for p in problems]
        gens = generate_texts(model, tok, ids, settings, seed=0)
        lengths[name] = sum(len(g.token_ids) for g in gens) / len(gens)
        right[name] = sum(chain.is_correct(g.text, p["answer"]) for g, p in zip(gens, problems)) / len(gens)
    assert lengths["asked"] < 0.5 * lengths["plain"], lengths
    assert right["asked"] >= 0.6 and right["plain"] >= 0.6, right


def test_self_distillation_scores_the_students_sample_after_the_instructed_prompt(tmp_path, monkeypatch):
    """What TRL's own hidden-state function receives: the student's forward gets the plain prompt, the
    teacher's the same completion after the instructed prompt."""
    from trl import DistillationTrainer

    seen = []
    original = DistillationTrainer._get_last_hidden_state

    def spy(self, unwrapped_model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        role = "teacher" if unwrapped_model is self.local_teacher() else "student"
        seen.append((role, input_ids.clone(), attention_mask.clone(), logits_to_keep))
        return original(self, unwrapped_model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "_get_last_hidden_state", spy)
    recipe = _recipe("self_distill")
    run = tmp_path / "run"
    train(recipe, run)
    _, tok = load_model("embedded:student")
    pairs = [(seen[i], seen[i + 1]) for i in range(0, len(seen), 2)]
    assert len(pairs) == 2 and all(s[0] == "student" and t[0] == "teacher" for s, t in pairs)
    for (_, student_ids, student_mask, k), (_, teacher_ids, teacher_mask, k2) in pairs:
        assert k == k2 and teacher_ids.shape[1] > student_ids.shape[1]
        for row_s, mask_s, row_t, mask_t in zip(student_ids, student_mask, teacher_ids, teacher_mask):
            s_prompt = tok.decode(row_s[:-k][mask_s[:-k].bool()])
            t_prompt = tok.decode(row_t[:-k][mask_t[:-k].bool()])
            assert s_prompt.startswith("Q:") and "short" not in s_prompt
            assert t_prompt == s_prompt + chain.CONCISE_INSTRUCTION
            assert torch.equal(row_s[-k:], row_t[-k:])  # the student's completion, scored by both
    # The frozen teacher is the initial student: the run's record and card say so.
    record = json.loads((run / "model" / "mpdistill.json").read_text())
    assert record["teacher"] == "embedded:student"
    assert "# `embedded:student` trained by Self-distillation" in (run / "model" / "README.md").read_text()
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 16 and all(r["trained_on"] == "student" and r["student_tokens"] > 0 for r in rollouts)


def test_self_distillation_stops_when_the_teacher_would_read_the_plain_prompt(tmp_path, monkeypatch):
    # As if TRL scored the teacher without the hook: the run must not train on a KL of zero.
    from mpdistill.trainers.teacher_prompts import TeacherPrompts

    monkeypatch.setattr(TeacherPrompts, "_get_last_hidden_state",
                        lambda self, m, ids, mask, k, *a, **kw: super(TeacherPrompts, self)._get_last_hidden_state(
                            m, ids, mask, k, *a, **kw))
    with pytest.raises(RuntimeError, match="did not score the teacher"):
        train(_recipe("self_distill"), tmp_path / "run")


def test_self_distillation_refuses_the_trained_student_as_its_own_teacher():
    from datasets import Dataset

    from mpdistill import MPDConfig

    model, tok = load_model("embedded:student")
    args = MPDConfig(output_dir="/nonexistent/sd", task="chain", max_steps=1, per_device_train_batch_size=4,
                     report_to="none")
    with pytest.raises(ConfigError, match="frozen copy"):
        SelfDistillTrainer(model=model, teacher_model=model, args=args, processing_class=tok,
                           train_dataset=Dataset.from_list(chain_problems(8, 1)))


def test_grpo_settings_come_from_the_same_config():
    recipe = _recipe("grpo_length", length_penalty=0.3, learning_rate=2e-4)
    config = grpo_config(training_arguments(recipe, Path("/nonexistent/run")))
    assert (config.learning_rate, config.per_device_train_batch_size, config.num_generations) == (2e-4, 8, 8)
    assert (config.temperature, config.max_completion_length, config.length_penalty) == (1.0, 200, 0.3)
    assert config.beta == 0.0  # GRPO's KL coefficient, not the distillation recipe's 0.5 JSD mix
    with pytest.raises(ConfigError, match="multiple of training.num_generations"):
        grpo_config(training_arguments(_recipe("grpo_length", batch_size=6), Path("/nonexistent/run")))


def test_grpo_length_ungated_rewards_correct_answers_minus_their_relative_length(tmp_path):
    run = tmp_path / "run"
    train(_recipe("grpo_length", length_penalty=0.2, length_penalty_on="all"), run)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "rewards/length/mean" in e]
    assert len(steps) == 2
    for e in steps:
        reference = e["length/reference_tokens"]
        assert 40 < reference < 200  # the initial student's mean length, measured before the first step
        assert e["rewards/length/mean"] == pytest.approx(-0.2 * e["completions/mean_length"] / reference, rel=1e-4)
        assert 0 <= e["rewards/correct/mean"] <= 1
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 16  # 2 steps x 8 samples: one problem, 8 solutions per step
    assert len({r["prompt"] for r in rollouts if r["step"] == 0}) == 1
    for r in rollouts:
        assert r["student_correct"] == chain.is_correct(r["student"], r["gold"])
    assert not (run / "model" / "mpdistill.json").read_text().count("embedded:teacher")
    card = (run / "model" / "README.md").read_text()
    assert "# `embedded:student` trained by GRPO with a length penalty" in card and "as the teacher" not in card


def test_dry_run_names_the_teacher_each_baseline_uses():
    result = CliRunner().invoke(app, ["train", "embedded", "--dry-run", "--set", "method=grpo_length"])
    assert result.exit_code == 0, result.output
    assert "not used by grpo_length" in result.output
    result = CliRunner().invoke(app, ["train", "embedded", "--dry-run", "--set", "method=self_distill"])
    assert result.exit_code == 0, result.output
    teacher_line = next(line for line in result.output.splitlines() if line.startswith("teacher:"))
    assert "embedded:student" in teacher_line
    assert "teacher: the frozen initial student" in result.output.splitlines()[0]
    result = CliRunner().invoke(app, ["train", "embedded", "--dry-run", "--set", "method=self_distill",
                                      "--set", "training.teacher_sync_steps=20"])
    assert "the student, refreshed every 20 steps" in result.output.splitlines()[0]


def _grpo_trainer(tmp_path, **training):
    from mpdistill.run.pipeline import build_trainer, training_problems

    recipe = _recipe("grpo_length", **training)
    student, tok = load_model(recipe.student)
    return build_trainer(recipe, student, None, tok, training_problems(recipe), tmp_path), tok


@pytest.mark.parametrize("gate, expected", [
    # correct and short, correct and long (its penalty capped at its whole reward), wrong and short, wrong and long
    ("correct", [1 - 0.2 * 20 / 100, 0.0, 0.0, 0.0]),
    ("all", [1 - 0.2 * 20 / 100, 1 - 0.2 * 600 / 100, -0.2 * 20 / 100, -0.2 * 600 / 100]),
])
def test_grpo_length_penalty_gated_by_correctness_gives_wrong_answers_nothing(tmp_path, gate, expected):
    """Gated (the default): reward = correct * max(0, 1 - penalty * tokens / reference), so no wrong answer
    gains by being short and no correct answer falls below a wrong one. Ungated: every answer pays."""
    trainer, _ = _grpo_trainer(tmp_path, length_penalty=0.2, length_penalty_on=gate)
    trainer.length_reference = 100.0
    trainer.model.train()
    completions = ["1+2=3\nA:3", "1+2=3\nA:3", "1+2=4\nA:4", "1+2=4\nA:4"]
    ids = [[5] * 20, [5] * 600, [5] * 20, [5] * 600]
    prompts, golds = ["Q:1+2\n"] * 4, ["3"] * 4
    correct = trainer._correct(prompts, completions, ids, answer=golds)
    length = trainer._length(prompts, completions, ids, answer=golds)
    assert correct == [1.0, 1.0, 0.0, 0.0]
    assert [c + x for c, x in zip(correct, length)] == pytest.approx(expected)
    if gate == "correct":  # a correct answer never scores below a wrong one, however long
        assert min(expected[:2]) >= max(expected[2:])


def test_grpo_gated_penalty_is_the_default_and_its_card_says_so(tmp_path):
    run = tmp_path / "run"
    train(_recipe("grpo_length", length_penalty=0.2), run)
    assert load_recipe(run / "recipe.yaml").training.length_penalty_on == "correct"
    assert "a wrong answer gets nothing whatever its length" in (run / "model" / "README.md").read_text()


def test_refreshed_self_distillation_copies_the_student_into_its_teacher(tmp_path):
    """training.teacher_sync_steps: after every N steps the teacher is the student as it then is; without
    it, the teacher stays the initial student."""
    from mpdistill.run.pipeline import build_trainer, training_problems

    for sync, expect_copy in ((1, True), (None, False)):
        recipe = _recipe("self_distill", teacher_sync_steps=sync, beta=1.0)
        student, tok = load_model(recipe.student)
        teacher, _ = load_model(recipe.student)
        trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path / str(sync))
        initial = [p.detach().clone() for p in teacher.parameters()]
        trainer.train()
        same = all(torch.equal(a, b) for a, b in zip(teacher.parameters(), trainer.model.parameters()))
        unchanged = all(torch.equal(a, b) for a, b in zip(teacher.parameters(), initial))
        assert (same, unchanged) == (expect_copy, not expect_copy)
    synced = recipe.model_copy(update={"training": recipe.training.model_copy(update={"teacher_sync_steps": 1})})
    train(synced, tmp_path / "card")
    assert "a copy of itself refreshed every 1 steps" in (tmp_path / "card" / "model" / "README.md").read_text()


def test_a_resumed_refreshed_run_gets_its_refreshed_teacher_back(tmp_path):
    """The refreshed teacher is no longer the initial student: each checkpoint holds it, and a resume
    loads it, so the resumed run scores with the teacher the uninterrupted run had."""
    from mpdistill.trainers.checkpoints import ResumeError

    recipe = load_recipe(shipped_path("embedded"), {**TINY, "method": "self_distill", "training": {
        **TINY["training"], "steps": 4, "save_steps": 2, "teacher_sync_steps": 1, "beta": 1.0}})
    whole = tmp_path / "whole"
    train(recipe, whole)
    checkpoint = whole / "trainer" / "checkpoint-2"
    assert (checkpoint / "teacher.safetensors").is_file()
    # Stop after step 2: the same run cut short, then resumed from its checkpoint.
    cut = tmp_path / "cut"
    short = recipe.model_copy(update={"training": recipe.training.model_copy(update={"steps": 2})})
    train(short, cut)
    import shutil

    shutil.rmtree(cut / "model")
    (cut / "recipe.yaml").write_text((whole / "recipe.yaml").read_text())
    train(recipe, cut, resume=True)
    a = load_model(str(whole / "model"))[0].state_dict()
    b = load_model(str(cut / "model"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    (cut / "trainer" / "checkpoint-4" / "teacher.safetensors").unlink()
    shutil.rmtree(cut / "model")
    with pytest.raises(ResumeError, match="teacher.safetensors"):
        train(recipe, cut, resume=True)


def test_grpo_reference_length_is_the_initial_students_measured_once(tmp_path):
    """The penalty's scale is the initial student's mean length, measured before the first step: not the
    length of the model being trained (which would move the reward's scale as the model shortens)."""
    run = tmp_path / "run"
    train(_recipe("grpo_length", learning_rate=3e-3, steps=3), run)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    refs = [e["length/reference_tokens"] for e in log if "length/reference_tokens" in e]
    assert len(refs) == 3 and len(set(refs)) == 1
    # ...while the lengths of the model being trained moved (a reference measured from it would have too).
    lengths = [e["completions/mean_length"] for e in log if "completions/mean_length" in e]
    assert len(set(lengths)) == 3 and refs[0] not in lengths
    fresh, _ = _grpo_trainer(tmp_path / "fresh", learning_rate=3e-3, steps=3)  # the same seed, nothing trained
    assert fresh.length_reference == refs[0]
