"""The embedded tokenizer and `bootstrap()`, at a scale of a few steps (seconds on one core)."""

import json
import random
from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from mpdistill.models import worlds as embedded
from mpdistill.cli import app
from mpdistill.models.worlds import STAGES, BootstrapPlan, bootstrap, build_tokenizer
from mpdistill.tasks import chain

PLAN = BootstrapPlan(student_max_steps=3, teacher_max_steps=3, first_check=2, check_every=1, validation_n=8,
                     batch_size=8)


def chain_texts(n: int = 40) -> list[str]:
    rng = random.Random(0)
    texts = []
    for _ in range(n):
        problem = chain.sample_problem(rng, rng.choice(chain.SPLITS))
        route = rng.choice(chain.ROUTES)
        verbose = chain.verbose_trace(problem, route, rng)
        texts += [problem.prompt, verbose, chain.concise_trace(problem, route),
                  chain.rewrite_prompt(problem.prompt, verbose) + chain.concise_trace(problem, route)]
    return texts


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trips_chain_text_exactly():
    tok = build_tokenizer()
    texts = chain_texts()
    # The sample exercises every habit of the verbose style.
    joined = "".join(texts)
    for piece in ("wait no", "check", "so now we have", "so the answer is", "rewrite:\n", "short:\n"):
        assert piece in joined
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text


def test_tokenizer_pieces():
    tok = build_tokenizer()
    assert tok.tokenize("Q:7+3\nso we need") == ["Q", ":", "7", "+", "3", "\n", "so", " ", "we", " ", "need"]
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "<eos>", "<unk>")
    assert tok.padding_side == "left"
    # Unknown words map to <unk> rather than being split silently into letters.
    assert tok("hello", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    # No special tokens are added around a prompt.
    assert tok("Q:1+2\n")["input_ids"] == tok("Q:1+2\n", add_special_tokens=False)["input_ids"]


def test_tokenizer_survives_save_and_auto_load(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (
        tok.pad_token_id, tok.eos_token_id, tok.unk_token_id)
    assert loaded.padding_side == "left"
    for text in chain_texts(10):
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text


# ------------------------------------------------------------------ bootstrap


@pytest.fixture(scope="module")
def boot(tmp_path_factory):
    out = tmp_path_factory.mktemp("boot")
    events = []
    manifest = bootstrap(out, PLAN, progress=lambda *e: events.append(e), device="cpu")
    return out, manifest, events


def tensors(folder):
    return load_file(str(folder / "model.safetensors"))


def test_bootstrap_writes_loadable_models(boot):
    out, _, _ = boot
    assert sorted(p.name for p in out.iterdir()) == ["student", "teacher"]
    tok = build_tokenizer()
    sizes = {}
    for name in ("student", "teacher"):
        folder = out / name
        model = AutoModelForCausalLM.from_pretrained(folder)
        loaded_tok = AutoTokenizer.from_pretrained(folder)
        assert loaded_tok.get_vocab() == tok.get_vocab()
        assert model.config.vocab_size == len(tok)
        assert (folder / "generation_config.json").is_file()
        gen = GenerationConfig.from_pretrained(folder)
        assert gen.eos_token_id == tok.eos_token_id and gen.pad_token_id == tok.pad_token_id
        assert gen.do_sample is True and gen.temperature == 1.0
        ids = loaded_tok("Q:1+2-3\n", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert logits.shape == (1, ids.shape[1], len(tok))
        assert torch.isfinite(logits).all()
        sizes[name] = sum(p.numel() for p in model.parameters())
    assert sizes["teacher"] > sizes["student"]


def test_bootstrap_shapes_and_manifest(boot):
    out, manifest, _ = boot
    assert STAGES == ("student", "teacher")
    assert manifest["plan"] == asdict(PLAN)
    assert list(manifest["stages"]) == ["student", "teacher"]
    student = AutoModelForCausalLM.from_pretrained(out / "student").config
    teacher = AutoModelForCausalLM.from_pretrained(out / "teacher").config
    for config, shape in ((student, embedded.STUDENT_SHAPE), (teacher, embedded.TEACHER_SHAPE)):
        assert {k: getattr(config, k) for k in asdict(shape)} == asdict(shape)
    stages = manifest["stages"]
    assert stages["student"]["shape"] == asdict(embedded.STUDENT_SHAPE)
    assert stages["teacher"]["shape"] == asdict(embedded.TEACHER_SHAPE)
    assert stages["student"]["parameters"] < stages["teacher"]["parameters"]
    # Neither stop criterion can be met by an untrained model: both run every step.
    assert [stages[s]["steps"] for s in ("student", "teacher")] == [3, 3]


def test_bootstrap_json_lists_the_validation_checks(boot):
    out, manifest, _ = boot
    for name in ("student", "teacher"):
        record = json.loads((out / name / "bootstrap.json").read_text())
        assert record["plan"] == asdict(PLAN)
        assert record["stage"] == name
        assert record["device"] == "cpu"
        # The file holds the plan and exactly what the returned manifest says about the model.
        assert record["world"] == manifest["world"] == "concise-teacher"
        assert {k: v for k, v in record.items() if k not in ("plan", "world")} == manifest["stages"][name]
        # first_check=2, check_every=1, 3 steps: checks after steps 2 and 3.
        checks = record["validation_checks"]
        assert [c["step"] for c in checks] == [2, 3]
        wanted = {"step", "accuracy", "mean_tokens"} | ({"rewrite_exact"} if name == "teacher" else set())
        for c in checks:
            assert set(c) == wanted
            assert 0 <= c["accuracy"] <= 1 and 0 < c["mean_tokens"] <= 256
            assert 0 <= c.get("rewrite_exact", 0) <= 1


def test_bootstrap_reports_progress(boot):
    _, _, events = boot
    losses = [(name, step) for name, step, _, scores in events if scores is None]
    checks = [(name, step) for name, step, _, scores in events if scores is not None]
    assert losses == [("student", 1), ("student", 2), ("student", 3), ("teacher", 1), ("teacher", 2), ("teacher", 3)]
    assert checks == [("student", 2), ("student", 3), ("teacher", 2), ("teacher", 3)]
    assert all(loss > 0 for _, _, loss, scores in events if scores is None)


def test_bootstrap_is_deterministic_from_the_seed(boot, tmp_path):
    first, _, _ = boot
    bootstrap(tmp_path / "same", PLAN, device="cpu")
    for name in ("student", "teacher"):
        a, b = tensors(first / name), tensors(tmp_path / "same" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"
        # Same checks and losses too (everything but wall time).
        ra = json.loads((first / name / "bootstrap.json").read_text())
        rb = json.loads((tmp_path / "same" / name / "bootstrap.json").read_text())
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb


def test_another_seed_gives_other_weights(boot, tmp_path):
    first, _, _ = boot
    bootstrap(tmp_path, replace(PLAN, seed=1), only=("student",), device="cpu")
    assert not (tmp_path / "teacher").exists()
    a, b = tensors(first / "student"), tensors(tmp_path / "student")
    assert a.keys() == b.keys()
    assert not any(torch.equal(a[k], b[k]) for k in a if a[k].numel() > 1 and a[k].std() > 0)


def test_unknown_stage_is_rejected_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"unknown bootstrap stage\(s\) \['studnet'\]"):
        bootstrap(tmp_path / "x", PLAN, only=("studnet",))
    assert not (tmp_path / "x").exists()


def test_bootstrap_cli_only_student(tmp_path, monkeypatch):
    # The CLI builds BootstrapPlan(seed=...) and applies its options; a small validation set and
    # batch keep this to a second (the options under test are still the CLI's).
    small = replace(embedded.WORLDS["concise-teacher"].plan, validation_n=8, batch_size=8)
    monkeypatch.setitem(embedded.WORLDS, "concise-teacher", replace(embedded.WORLDS["concise-teacher"], plan=small))
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["bootstrap", "--out", str(out), "--student-max-steps", "2",
                                      "--teacher-max-steps", "2", "--first-check", "2", "--only", "student"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["student"]
    assert "student: step 2 validation: accuracy" in result.output
    model = AutoModelForCausalLM.from_pretrained(out / "student")
    assert f"student: {sum(p.numel() for p in model.parameters()):,} parameters, 2 steps" in result.output
    record = json.loads((out / "student" / "bootstrap.json").read_text())
    assert (record["plan"]["student_max_steps"], record["plan"]["teacher_max_steps"], record["plan"]["first_check"],
            record["plan"]["seed"]) == (2, 2, 2, 0)
    assert record["stage"] == "student" and record["steps"] == 2
    assert [c["step"] for c in record["validation_checks"]] == [2]


def test_the_cli_trains_the_verbose_teacher_world_by_its_own_plan(tmp_path, monkeypatch):
    """--world verbose-teacher: that world's corpora and plan (greedy checks), recorded in bootstrap.json."""
    small = replace(embedded.WORLDS["verbose-teacher"].plan, validation_n=8, batch_size=8)
    monkeypatch.setitem(embedded.WORLDS, "verbose-teacher", replace(embedded.WORLDS["verbose-teacher"], plan=small))
    out = tmp_path / "vt"
    result = CliRunner().invoke(app, ["bootstrap", "--world", "verbose-teacher", "--out", str(out), "--student-max-steps",
                                      "2", "--first-check", "2", "--only", "student"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "student" / "bootstrap.json").read_text())
    assert record["world"] == "verbose-teacher" and record["plan"]["check_temperature"] == 0.0
    assert record["plan"]["student_stop_accuracy"] == embedded.WORLDS["verbose-teacher"].plan.student_stop_accuracy
    result = CliRunner().invoke(app, ["bootstrap", "--world", "nope", "--out", str(out)])
    assert result.exit_code == 2 and "--world must be one of" in result.output


def test_the_worlds_models_resolve_by_name_and_unknown_names_are_refused():
    from mpdistill.errors import ConfigError
    from mpdistill.models.loading import resolve_model

    assert resolve_model("embedded:student").endswith("concise-teacher/student")
    assert resolve_model("embedded:verbose-teacher/teacher").endswith("verbose-teacher/teacher")
    for bad in ("embedded:verbose-teacher/x", "embedded:other/student", "embedded:stu"):
        with pytest.raises(ConfigError, match="embedded:verbose-teacher/student"):
            resolve_model(bad)


# The digest of the first 200 student and 200 teacher examples as the shipped concise-teacher models were trained.
CONCISE_WORLD_DIGEST = "81419f8a79538e99"


def test_the_concise_teacher_worlds_corpora_are_unchanged():
    """The first world's shipped models were trained from these exact streams: a style setting added for
    the second world must not change one draw (the verbose habits' default rates)."""
    import hashlib

    rng = random.Random(0)
    texts = [p + c for p, c in (embedded.student_example(rng) for _ in range(200))]
    texts += [p + c for p, c in (embedded.teacher_example(rng) for _ in range(200))]
    digest = hashlib.sha256("".join(texts).encode()).hexdigest()[:16]
    assert digest == CONCISE_WORLD_DIGEST


def test_in_the_verbose_teacher_world_a_trace_keeps_one_style():
    """Each trace draws its style once: re-checking and restating the total are (almost) every step or
    (almost) never, so a model continues a trace in the style its start shows."""
    rng = random.Random(0)
    both = none = 0
    for _ in range(400):
        style = embedded.verbose_world_style(rng)
        assert style.check in (embedded.VT_HABIT_ON, embedded.VT_HABIT_OFF)
        assert style.restate_total in (embedded.VT_HABIT_ON, embedded.VT_HABIT_OFF)
        both += style.check == style.restate_total == embedded.VT_HABIT_ON
        none += style.check == style.restate_total == embedded.VT_HABIT_OFF
    assert 0.25 < both / 400 < 0.5 and 0.08 < none / 400 < 0.25
    own = [embedded.verbose_world_teacher_example(rng) for _ in range(2000)]
    plain = [c for p, c in own if "rewrite" not in p and not p.endswith(chain.CONCISE_INSTRUCTION)]
    concise = sum("check" not in c and "so " not in c for c in plain) / len(plain)
    assert 0.08 < concise < 0.2  # one in ten of the teacher's own solutions is concise (some verbose ones look so)
