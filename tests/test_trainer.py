"""The trainers end to end on tiny random models (CPU, seconds)."""

import json

import pytest
import torch

from mpdistill.errors import ConfigError
from mpdistill.run.recipe import recipe_from_dict
from mpdistill.run.pipeline import build_trainer, check_compatible, load_model, train
from mpdistill.rewriting.rewrite import RewriteOutput
from mpdistill.tasks import chain

FIELDS = {"step", "index", "prompt", "student", "rewrite", "accepted", "reason", "student_tokens", "rewrite_tokens",
          "trained_on", "process", "route_kept", "gold", "student_answer", "student_correct"}


def _recipe(tiny_pair, method, **rewrite):
    return recipe_from_dict(
        {
            "method": method,
            "student": str(tiny_pair / "student"),
            "teacher": str(tiny_pair / "teacher"),
            "data": {"n_train": 16},
            "training": {"steps": 2, "batch_size": 4, "max_completion_length": 24, "logging_steps": 1},
            "rewrite": {"prompt_template": chain.REWRITE_TEMPLATE.replace("{prompt}", "{problem}"),
                        "use_chat_template": False, "max_new_tokens": 24, **rewrite},
            "eval": {"n": 8},
        }
    )


class OracleRewriter:
    """Answers every rewrite prompt with the concise trace whose final answer matches the student's.

    A test double for the plumbing: accepted rewrites must replace the student's completion.
    """

    def __init__(self, answer_from_trace=True):
        self.answer_from_trace = answer_from_trace

    def rewrite(self, prompts, max_new_tokens=None):
        out = []
        for p in prompts:
            problem_line, _, rest = p.partition("rewrite:\n")
            trace = rest.rsplit("\nshort:\n", 1)[0]
            answer = chain.extract_answer(trace)
            out.append(RewriteOutput(f"A:{answer}" if self.answer_from_trace else "A:x"))
        return out


def _trainer(tiny_pair, tmp_path, method, **rewrite):
    recipe = _recipe(tiny_pair, method, **rewrite)
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    from mpdistill.run.pipeline import training_problems

    return build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)


def _force_answers(trainer):
    """Make the random student end every completion with an answer, so rewrites can be verified."""
    from trl import DistillationTrainer

    original = DistillationTrainer._generate

    def patched(self, prompts):
        prompt_ids, completion_ids, *rest = original(self, prompts)
        ids = trainer._tokenizer("so the answer is 3\nA:3", add_special_tokens=False)["input_ids"]
        return (prompt_ids, [ids + [trainer._tokenizer.eos_token_id] for _ in completion_ids], *rest)

    return patched


def test_mpd_trains_on_accepted_rewrites_and_logs_every_sample(tiny_pair, tmp_path, monkeypatch):
    trainer = _trainer(tiny_pair, tmp_path, "mpd")
    trainer.rewriter = OracleRewriter()
    from trl import DistillationTrainer

    monkeypatch.setattr(DistillationTrainer, "_generate", _force_answers(trainer))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4
    assert all(set(r) == FIELDS for r in rows)
    assert all(r["accepted"] and r["reason"] == "accepted" and r["trained_on"] == "rewrite" for r in rows)
    assert all(r["rewrite"] == "A:3" and r["rewrite_tokens"] < r["student_tokens"] for r in rows)
    # The student's own answer, graded against the problem's: accuracy on the training samples.
    assert all(r["student_answer"] == "3" and r["student_correct"] == (r["gold"] == "3") for r in rows)
    assert any(r["student_correct"] for r in rows) and not all(r["student_correct"] for r in rows)
    assert sorted((r["step"], r["index"]) for r in rows) == [(s, i) for s in (0, 1) for i in range(4)]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    logged = [h for h in trainer.state.log_history if "mpd/acceptance_rate" in h]
    assert logged and logged[0]["mpd/acceptance_rate"] == 1.0 and logged[0]["mpd/compression_ratio"] < 1


def test_rejected_rewrites_are_dropped_with_zero_loss_weight(tiny_pair, tmp_path, monkeypatch):
    trainer = _trainer(tiny_pair, tmp_path, "mpd", on_reject="drop")
    trainer.rewriter = OracleRewriter(answer_from_trace=False)  # never parses: every sample rejected
    from trl import DistillationTrainer

    monkeypatch.setattr(DistillationTrainer, "_generate", _force_answers(trainer))
    trainer.model.train()
    batch = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in range(4)])
    assert batch["num_items_in_batch"].item() == 0
    assert batch["tool_mask"].sum().item() == 0
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert {r["trained_on"] for r in rows} == {"dropped"} and {r["reason"] for r in rows} == {"unparsed"}


def test_random_student_rewrites_are_rejected_not_crashing(tiny_pair, tmp_path):
    trainer = _trainer(tiny_pair, tmp_path, "mpd")
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and not any(r["accepted"] for r in rows)
    assert all(r["trained_on"] == "student" for r in rows)


@pytest.mark.parametrize("method", ["opd", "offpolicy_kd", "rewrite_sft"])
def test_baselines_run_through_the_same_pipeline(tiny_pair, tmp_path, method):
    model_dir = train(_recipe(tiny_pair, method), tmp_path)
    reloaded, tok = load_model(str(model_dir))
    assert reloaded.config.vocab_size == len(tok)
    assert (tmp_path / "recipe.yaml").exists() and (tmp_path / "train_log.jsonl").exists()


def test_rewrite_sft_loss_is_cross_entropy_on_the_completion(tiny_pair, tmp_path):
    trainer = _trainer(tiny_pair, tmp_path, "rewrite_sft")
    prompt = torch.tensor([[5, 6, 7]])
    completion = torch.tensor([[8, 9, 1]])
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": torch.ones_like(completion)}
    model = trainer.model
    loss, _, n = trainer._compute_loss(model, inputs, None)
    logits = model(input_ids=torch.cat([prompt, completion], 1)).logits[:, 2:5]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), completion.reshape(-1))
    assert n.item() == 3 and torch.allclose(loss, expected, atol=1e-5)


def test_teacher_with_another_vocabulary_is_refused(tiny_pair):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    student, tok = load_model(str(tiny_pair / "student"))
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")))
    with pytest.raises(ConfigError, match="does not share the vocabulary"):
        check_compatible("s", tok, student, "t", other, student)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        load_model(str(tmp_path / "nowhere"))


def test_train_refuses_a_folder_that_holds_a_run(tiny_pair, tmp_path):
    (tmp_path / "rollouts.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_recipe(tiny_pair, "mpd"), tmp_path)
    assert (tmp_path / "rollouts.jsonl").read_text() == '{"step": 0}\n'


def test_require_gold_without_answers_is_refused_before_training(tiny_pair, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"problem": "Q:1+2\\n"}\n')
    recipe = _recipe(tiny_pair, "mpd", require_gold=True).model_copy(
        update={"data": recipe_from_dict({"task": "chain", "data": {"train": str(data), "answer_field": None}}).data}
    )
    with pytest.raises(ConfigError, match="training problem 1 of 1 has no answer"):
        train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _record_loss_inputs(trainer):
    """Every forward the loss runs: (model, input_ids, attention_mask, logits_to_keep), and each batch's loss mask."""
    seen, masks = [], []
    original_hidden, original_loss = trainer._get_last_hidden_state, trainer._compute_loss

    def hidden(model, input_ids, attention_mask, logits_to_keep, **kw):
        seen.append((model, input_ids.clone(), attention_mask.clone(), logits_to_keep))
        return original_hidden(model, input_ids, attention_mask, logits_to_keep, **kw)

    def loss(model, inputs, num_items_in_batch):
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
        masks.append((inputs["prompt_ids"].size(1), mask.clone()))
        return original_loss(model, inputs, num_items_in_batch)

    trainer._get_last_hidden_state, trainer._compute_loss = hidden, loss
    return seen, masks


@pytest.mark.parametrize("method", ["mpd", "rewrite_sft"])
def test_the_loss_runs_on_the_original_prompt_and_the_accepted_rewrite_token_for_token(tiny_pair, tmp_path, method,
                                                                                       monkeypatch):
    """For the student and (MPD) the teacher: the prompt as the student saw it, then the rewrite
    ending with the token the student stopped on; the trace it replaced is nowhere in the loss."""
    from trl import DistillationTrainer

    trainer = _trainer(tiny_pair, tmp_path, method)
    trainer.rewriter = OracleRewriter()
    monkeypatch.setattr(DistillationTrainer, "_generate", _force_answers(trainer))
    seen, masks = _record_loss_inputs(trainer)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    tok = trainer._tokenizer
    rewrite = tok("A:3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert all(r["trained_on"] == "rewrite" for r in rows) and len(rows) == 8
    expected_prompts = sorted(list(trainer._tokenize_prompts([r["prompt"]])[0][0]) for r in rows)
    # MPD: the student's forward, then the teacher's on the same ids; rewrite-SFT: the student's alone.
    student_calls = seen[0::2] if method == "mpd" else seen
    assert len(student_calls) == len(masks) == 2
    got_prompts = []
    for (model, input_ids, attention, _), (width, mask) in zip(student_calls, masks):
        assert model is trainer.accelerator.unwrap_model(trainer.model)
        for row in range(input_ids.size(0)):
            got_prompts.append([t for t, a in zip(input_ids[row, :width].tolist(), attention[row, :width].tolist()) if a])
            trained = [t for t, m in zip(input_ids[row, width:].tolist(), mask[row].tolist()) if m]
            assert trained == rewrite, (trained, rewrite)
    assert sorted(got_prompts) == expected_prompts
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    if method == "mpd":
        for (s_model, s_ids, s_att, _), (t_model, t_ids, t_att, _) in zip(seen[0::2], seen[1::2]):
            assert t_model is teacher and torch.equal(s_ids, t_ids) and torch.equal(s_att, t_att)
    else:
        assert all(model is not teacher for model, *_ in seen)  # cross-entropy: no teacher logits
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert logged and all(v > 0 for v in logged)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_a_step_whose_samples_are_all_dropped_has_zero_loss_and_leaves_the_weights(tiny_pair, tmp_path, monkeypatch):
    from trl import DistillationTrainer

    trainer = _trainer(tiny_pair, tmp_path, "mpd", on_reject="drop")
    trainer.rewriter = OracleRewriter(answer_from_trace=False)  # never parses: every sample rejected
    monkeypatch.setattr(DistillationTrainer, "_generate", _force_answers(trainer))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses == [0.0, 0.0]  # no NaN from a zero token count
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert not any(h.get("nonfinite/skipped") for h in trainer.state.log_history)


def test_offpolicy_kd_vets_the_teachers_samples_as_mpd_vets_its_rewrites(tiny_pair, tmp_path, monkeypatch):
    """A teacher sample cut at the length limit, or without a final answer, is not trained on."""
    from mpdistill.trainers import offpolicy_kd
    from mpdistill.rollout.hf import Generation

    trainer = _trainer(tiny_pair, tmp_path, "offpolicy_kd")
    tok = trainer._tokenizer
    texts = ["7+3=0\nA:0", "7+3=0 and so", "7+3=0\nA:0", "7+3"]
    fake = [Generation(t, tok(t, add_special_tokens=False)["input_ids"], truncated=i == 2,
                       end_id=None if i == 2 else tok.eos_token_id) for i, t in enumerate(texts)]
    seen = {}

    def generate(model, tokenizer, prompts, settings, **kw):
        seen["settings"] = settings
        return fake[: len(prompts)]

    monkeypatch.setattr(offpolicy_kd, "generate_texts", generate)
    trainer.model.train()
    batch = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in range(4)])
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows] == ["accepted", "unparsed", "truncated", "unparsed"]
    assert [r["trained_on"] for r in rows] == ["teacher", "dropped", "dropped", "dropped"]
    trained = (batch["completion_mask"] * batch["tool_mask"]).sum(dim=1).tolist()  # what the loss counts per row
    assert trained[0] == len(fake[0].token_ids) + 1 and trained[1:] == [0, 0, 0]
    # The teacher samples as it does for MPD's rewrites (the recipe's rewrite sampling).
    r = _recipe(tiny_pair, "offpolicy_kd").rewrite
    assert (seen["settings"].temperature, seen["settings"].top_p, seen["settings"].top_k) == (r.temperature, r.top_p,
                                                                                             r.top_k)


def test_the_students_answer_is_read_after_its_thinking_as_verification_reads_it():
    import random
    from types import SimpleNamespace

    from mpdistill.rewriting.rewrite import RewriteOutput, RewriteSettings, Sample, rewrite_batch
    from mpdistill.tasks import get_task
    from mpdistill.trainers.mpd import MPDTrainer

    task = get_task("math")
    trainer = SimpleNamespace(task=task)
    unfinished = Sample(problem="2+2", student_text="<think>so maybe \\boxed{4}, let me check", student_ids=[1, 2],
                        gold="4")
    answered = Sample(problem="2+2", student_text="<think>2+2=5?</think>\nSo \\boxed{4}", student_ids=[1], gold="4")
    no_gold = Sample(problem="2+2", student_text="\\boxed{4}", student_ids=[1])
    rewriter = SimpleNamespace(rewrite=lambda prompts, max_new_tokens=None: [RewriteOutput("") for _ in prompts])
    # The answer is read once, where the mixing rule reads it; the record reports that reading.
    rewrite_batch([unfinished, answered, no_gold], rewriter, RewriteSettings(), task, lambda text, end: [],
                  random.Random(0))
    assert unfinished.verdict.reason == "student_unparsed"
    record = MPDTrainer._record(trainer, "p", unfinished)
    assert (record["student_answer"], record["student_correct"]) == (None, False)
    assert MPDTrainer._record(trainer, "p", answered)["student_correct"] is True
    assert MPDTrainer._record(trainer, "p", no_gold)["student_correct"] is None



class AlternatingRewriter(OracleRewriter):
    """Accepts every other rewrite (the others have no answer), so a batch mixes rewrites and fallbacks."""

    def rewrite(self, prompts, max_new_tokens=None):
        good = super().rewrite(prompts, max_new_tokens)
        return [g if i % 2 == 0 else RewriteOutput("no answer here") for i, g in enumerate(good)]


def test_mpd_with_a_concise_teacher_context_scores_only_the_rewrites_after_the_instruction(tiny_pair, tmp_path,
                                                                                         monkeypatch):
    """rewrite.teacher_context: concise: the student's forward reads the plain prompt; the teacher's reads the
    prompt and the concise instruction in front of an accepted rewrite, and the plain prompt in front of a
    fallback; both score the same completion tokens."""
    from trl import DistillationTrainer

    trainer = _trainer(tiny_pair, tmp_path, "mpd", teacher_context="concise")
    trainer.rewriter = AlternatingRewriter()
    monkeypatch.setattr(DistillationTrainer, "_generate", _force_answers(trainer))
    _, masks = _record_loss_inputs(trainer)
    # What TRL's own hidden-state function receives, after the trainer put the teacher's prompts in.
    seen, original = [], DistillationTrainer._get_last_hidden_state

    def spy(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        seen.append((model, input_ids.clone(), attention_mask.clone(), logits_to_keep))
        return original(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "_get_last_hidden_state", spy)
    trainer.train()
    tok = trainer._tokenizer
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert {r["trained_on"] for r in rows} == {"rewrite", "student"}
    rewrite = tok("A:3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    kinds = []
    for (s_model, s_ids, s_att, k), (t_model, t_ids, t_att, k2), (width, mask) in zip(seen[0::2], seen[1::2], masks):
        assert t_model is teacher and s_model is not teacher and k == k2
        assert torch.equal(s_ids[:, -k:], t_ids[:, -k:])  # the same completions, token for token
        for row in range(s_ids.size(0)):
            s_prompt = tok.decode(s_ids[row, :-k][s_att[row, :-k].bool()])
            t_prompt = tok.decode(t_ids[row, :-k][t_att[row, :-k].bool()])
            completion = [t for t, m in zip(s_ids[row, -k:].tolist(), mask[row].tolist()) if m]
            assert s_prompt.startswith("Q:") and "short" not in s_prompt
            if completion == rewrite:
                assert t_prompt == s_prompt + chain.CONCISE_INSTRUCTION
                kinds.append("rewrite")
            else:
                assert t_prompt == s_prompt
                kinds.append("student")
    assert sorted(kinds) == sorted(r["trained_on"] for r in rows)


def test_the_teacher_context_is_checked_with_the_rewrite_settings():
    with pytest.raises(ConfigError, match="teacher_context"):
        recipe_from_dict({"rewrite": {"teacher_context": "terse"}})
    with pytest.raises(ConfigError, match="teacher_context: concise is not available with rewrite.overlap"):
        recipe_from_dict({"rewrite": {"teacher_context": "concise", "overlap": True, "backend": "openai",
                                      "base_url": "http://127.0.0.1:1", "model": "m"}})


def test_the_mixed_control_trains_the_picked_share_on_the_teachers_own_samples(tiny_pair, tmp_path, monkeypatch):
    """opd_mixed: each sample is replaced by the teacher's own sample with probability teacher_share (one draw
    per sample from the run's seeded stream); a teacher sample that fails the filter leaves the student's."""
    import random

    from mpdistill.trainers import offpolicy_kd
    from mpdistill.rollout.hf import Generation
    from trl import DistillationTrainer

    recipe = _recipe(tiny_pair, "opd_mixed")
    recipe = recipe.model_copy(update={"training": recipe.training.model_copy(update={"teacher_share": 0.5})})
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    from mpdistill.run.pipeline import training_problems

    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    monkeypatch.setattr(DistillationTrainer, "_generate", _force_answers(trainer))
    texts = ["7+3=0\nA:0", "7+3"]  # a vetted sample, and one without an answer
    asked = []

    def generate(model, tokenizer, prompts, settings, **kw):
        asked.append(len(prompts))
        out = []
        for i in range(len(prompts)):
            t = texts[i % 2]
            out.append(Generation(t, tok(t, add_special_tokens=False)["input_ids"], truncated=False, end_id=tok.eos_token_id))
        return out

    monkeypatch.setattr(offpolicy_kd, "generate_texts", generate)
    trainer.model.train()
    rows_in = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer._generate_and_score_completions(rows_in)
    rng = random.Random(recipe.seed)  # the trainer's mixing stream (seed + process index)
    picks = [rng.random() < 0.5 for _ in range(4)]
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert asked == [sum(picks)] and sum(picks) >= 1  # the teacher answers the picked problems only
    student_ids = tok("so the answer is 3\nA:3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    vetted = tok(texts[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    k = 0
    for i, (row, pick) in enumerate(zip(rows, picks)):
        ids = [t for t, m in zip(batch["completion_ids"][i].tolist(), batch["completion_mask"][i].tolist()) if m]
        assert row["student"] == "so the answer is 3\nA:3"
        if pick:
            assert row["teacher"] == texts[k % 2] and row["reason"] == ("accepted" if k % 2 == 0 else "unparsed")
            expected = vetted if k % 2 == 0 else student_ids
            assert row["trained_on"] == ("teacher" if k % 2 == 0 else "student")
            k += 1
        else:
            assert "teacher" not in row and row["trained_on"] == "student"
            expected = student_ids
        assert ids == expected, i
    assert (batch["tool_mask"] * batch["completion_mask"]).sum().item() == batch["completion_mask"].sum().item()  # none dropped


def test_the_mixed_control_is_a_method_of_recipes_and_the_python_api(tiny_pair, tmp_path):
    model_dir = train(_recipe(tiny_pair, "opd_mixed"), tmp_path / "run")
    card = (model_dir / "README.md").read_text()
    assert "replaced by the teacher's own solution" in card
    from mpdistill import MPDConfig

    assert MPDConfig(output_dir=str(tmp_path / "x"), task="chain", report_to="none").teacher_share == 0.25
    with pytest.raises(ValueError, match="teacher_share"):
        MPDConfig(output_dir=str(tmp_path / "x"), task="chain", report_to="none", teacher_share=1.5)


class QuarterAcceptingRewriter(OracleRewriter):
    """Accepts one rewrite in four (the others have no answer): an acceptance rate of 25%."""

    def rewrite(self, prompts, max_new_tokens=None):
        good = super().rewrite(prompts, max_new_tokens)
        return [g if i % 4 == 0 else RewriteOutput("no answer") for i, g in enumerate(good)]


@pytest.mark.parametrize("floor, stops", [(0.5, True), (0.2, False)])
def test_the_acceptance_floor_stops_a_run_below_it_and_only_then(tiny_pair, tmp_path, monkeypatch, floor, stops):
    from trl import DistillationTrainer

    from mpdistill.trainers.mix_monitor import MixFloorHalt

    trainer = _trainer(tiny_pair, tmp_path, "mpd", monitor_window=1, min_acceptance_rate=floor)
    trainer.rewriter = QuarterAcceptingRewriter()
    monkeypatch.setattr(DistillationTrainer, "_generate", _force_answers(trainer))
    if stops:
        with pytest.raises(MixFloorHalt, match=r"training stopped at step 1: rewrite.min_acceptance_rate is 0.5: 25% "):
            trainer.train()
        assert trainer.state.global_step == 1
    else:
        trainer.train()
        assert trainer.state.global_step == 2


class OtherRouteRewriter(OracleRewriter):
    """A valid concise rewrite, but along the other route than the student's (a step the student never wrote)."""

    def rewrite(self, prompts, max_new_tokens=None):
        return [RewriteOutput("9+9=8\nA:3") for _ in prompts]


def test_an_accepted_rewrite_off_the_students_route_is_trained_on_as_logged(tiny_pair, tmp_path, monkeypatch):
    """route_kept is a measurement, not a filter: an accepted rewrite that leaves the student's route is what the
    loss runs on, and the log says both that it was trained on and that it left the route."""
    from trl import DistillationTrainer

    trainer = _trainer(tiny_pair, tmp_path, "mpd")
    trainer.rewriter = OtherRouteRewriter()
    monkeypatch.setattr(DistillationTrainer, "_generate", _force_answers(trainer))
    trainer.model.train()
    batch = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in range(4)])
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert all(r["trained_on"] == "rewrite" and r["route_kept"] is False for r in rows)
    tok = trainer._tokenizer
    rewrite = tok("9+9=8\nA:3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for i in range(4):
        ids = [t for t, m in zip(batch["completion_ids"][i].tolist(), batch["completion_mask"][i].tolist()) if m]
        assert ids == rewrite
