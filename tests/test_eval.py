"""``mpdistill eval``: prompting, thinking accounting, resumable samples, summaries, the CLI."""

import io
import json
import logging
from pathlib import Path

import pytest
from rich.console import Console
from transformers import AutoTokenizer
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.evaluation.folder import EvalError, read_samples
from mpdistill.evaluation.runner import Unit, run_eval, run_units
from mpdistill.evaluation.settings import EvalSpec
from mpdistill.tasks.prompts import MATH_PROMPT, PromptEncoder, sampling_defaults, split_response
from mpdistill.rollout.hf import Generation
from mpdistill.tasks import get_task

QWEN3_FIXTURES = Path(__file__).parent / "fixtures" / "qwen3"


@pytest.fixture(scope="module")
def qwen_tok():
    return AutoTokenizer.from_pretrained(QWEN3_FIXTURES)


@pytest.fixture()
def problems_file(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"q": f"What is {i}+{i}?", "a": str(2 * i), "key": f"p{i}"}) + "\n"
                            for i in range(5)))
    return path


def _spec(model, problems_file, **kw):
    base = dict(model=str(model), benchmarks=[str(problems_file)], question_field="q", answer_field="a",
                id_field="key", max_new_tokens=6, batch_size=2, seed=3, n_samples=1)
    return EvalSpec(**{**base, **kw})


# --- prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("thinking, tail", [(True, "<|im_start|>assistant\n"),
                                            (False, "<|im_start|>assistant\n<think>\n\n</think>\n\n")])
def test_chat_prompt_switches_thinking(qwen_tok, thinking, tail):
    text = PromptEncoder(qwen_tok, thinking=thinking).render("What is 1+1?")
    assert text.startswith("<|im_start|>user\nWhat is 1+1?\nPlease reason step by step")
    assert text.endswith("\\boxed{}.<|im_end|>\n" + tail)


def test_tokenizer_without_chat_template_prompts_plainly_with_a_warning(caplog):
    from mpdistill.models.worlds import build_tokenizer

    tok = build_tokenizer()
    with caplog.at_level(logging.WARNING):
        enc = PromptEncoder(tok, template="{problem}")
    assert "no chat template" in caplog.text
    assert enc.encode("P:L3") == tok("P:L3", add_special_tokens=False)["input_ids"]


def test_sampling_defaults_per_family():
    assert sampling_defaults("qwen3", True)[0] == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    assert sampling_defaults("qwen3", False)[0] == {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
    greedy, source = sampling_defaults("llama", True)
    assert greedy["temperature"] == 0.0 and "greedy" in source


def test_the_models_generation_config_comes_first_for_sampling_and_the_family_first_for_the_budget():
    from transformers import GenerationConfig

    from mpdistill.tasks.prompts import max_new_tokens_default

    own = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=256)
    assert sampling_defaults("qwen3", True, own) == ({"temperature": 1.0, "top_p": 1.0, "top_k": 0},
                                                     "the model's generation_config")
    # Thinking switched off on purpose: the card's values for that mode (a config describes the default one).
    assert sampling_defaults("qwen3", False, own, thinking_given=True)[0] == {"temperature": 0.7, "top_p": 0.8,
                                                                               "top_k": 20}
    assert sampling_defaults("qwen3", True, GenerationConfig(do_sample=False))[0]["temperature"] == 0.6
    # A checkpoint's short chat budget must not cut a family's competition answers.
    chat = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=2048)
    assert max_new_tokens_default("qwen3", True, ["aime24"], chat) == (38_912, "qwen3 model card, competition math")
    assert max_new_tokens_default("llama", True, ["gsm8k"], chat) == (2048, "the model's generation_config")
    assert max_new_tokens_default("llama", True, ["gsm8k"], None) == (4096, "no family default")


def test_a_model_trained_without_thinking_is_evaluated_without_it(tiny_qwen3, problems_file, tmp_path):
    """mpdistill.json records how the student was trained to read its problems; eval follows it."""
    import shutil

    from mpdistill.models.record import write_record

    model = tmp_path / "student"
    shutil.copytree(tiny_qwen3, model)
    write_record(model, task="math", prompt_template="{problem}", prompt_style="chat", thinking=False)
    spec = _spec(model, problems_file, max_new_tokens=2, limit=1)
    run_eval(spec, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "eval_config.json").read_text())
    assert (config["thinking"], config["prompt_template"], config["chat_template"]) == (False, "{problem}", True)
    assert (config["temperature"], config["top_p"], config["top_k"]) == (0.7, 0.8, 20)


def test_thinking_and_answer_tokens_are_counted_apart(qwen_tok):
    text = "<think>\nso 2+2 is 4\n</think>\n\nThe answer is $\\boxed{4}$."
    ids = qwen_tok(text, add_special_tokens=False)["input_ids"]
    parts = split_response(text, ids, qwen_tok)
    assert parts.answer_text == "\n\nThe answer is $\\boxed{4}$."
    thinking_ids = qwen_tok("<think>\nso 2+2 is 4\n</think>", add_special_tokens=False)["input_ids"]
    assert parts.thinking_tokens == len(thinking_ids)
    assert parts.thinking_tokens + parts.answer_tokens == len(ids)


def test_unfinished_thinking_has_no_answer_section(qwen_tok):
    text = "<think>\nmaybe \\boxed{4} but let me check"
    parts = split_response(text, qwen_tok(text, add_special_tokens=False)["input_ids"], qwen_tok)
    assert parts.answer_text == "" and parts.answer_tokens == 0 and not parts.thinking_closed


def test_response_without_thinking_is_graded_whole(qwen_tok):
    parts = split_response("\\boxed{4}", [1, 2], qwen_tok)
    assert parts.answer_text == "\\boxed{4}" and parts.thinking_tokens is None


# --- resumable samples -------------------------------------------------------------------------


class ScriptedBackend:
    """Answers each prompt with a fixed text; counts how many prompts it was asked for."""

    def __init__(self, tokenizer, text):
        self.tokenizer, self.text, self.asked = tokenizer, text, 0

    def generate(self, prompts, seeds):
        self.asked += len(prompts)
        ids = self.tokenizer(self.text, add_special_tokens=False)["input_ids"]
        return [Generation(self.text, ids, truncated=False) for _ in prompts]


def _units(n, k=1):
    return [Unit("b", f"q{i}", s, (1,) * (i + 1), "4") for i in range(n) for s in range(k)]


def test_records_carry_thinking_counts_and_grade_only_the_answer(qwen_tok, tmp_path):
    backend = ScriptedBackend(qwen_tok, "<think>\n\\boxed{5}\n</think>\n\n\\boxed{4}")
    records = run_units(_units(3), backend, get_task("math"), qwen_tok, tmp_path / "s.jsonl", seed=0, batch_size=2)
    assert [r["correct"] for r in records] == [True] * 3
    r = records[0]
    assert r["extracted"] == "4" and r["thinking_tokens"] + r["answer_tokens"] == r["tokens"] > 0


def test_finished_units_are_not_redone_and_a_torn_line_is_dropped(qwen_tok, tmp_path):
    path = tmp_path / "s.jsonl"
    task = get_task("math")
    run_units(_units(4), ScriptedBackend(qwen_tok, "\\boxed{4}"), task, qwen_tok, path, seed=0, batch_size=2)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:15])  # killed while writing the second batch
    again = ScriptedBackend(qwen_tok, "\\boxed{4}")
    records = run_units(_units(4), again, task, qwen_tok, path, seed=0, batch_size=2)
    assert again.asked == 2  # only the second batch was generated again
    assert len(records) == 4 and len(path.read_text().splitlines()) == 4
    assert [r["id"] for _, r in read_samples(path)[0]] == ["q0", "q1", "q2", "q3"]


def test_a_corrupt_line_before_the_end_is_an_error_naming_it(qwen_tok, tmp_path):
    path = tmp_path / "s.jsonl"
    run_units(_units(3), ScriptedBackend(qwen_tok, "x"), get_task("math"), qwen_tok, path, seed=0, batch_size=1)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{oops\n" + lines[2])
    with pytest.raises(EvalError, match=r"s\.jsonl:2"):
        run_units(_units(3), ScriptedBackend(qwen_tok, "x"), get_task("math"), qwen_tok, path, seed=0, batch_size=1)
    assert path.read_text() == lines[0] + "{oops\n" + lines[2]  # nothing written over


# --- run_eval on a tiny random Qwen3 ----------------------------------------------------------


@pytest.mark.parametrize("thinking", [True, False])
def test_eval_end_to_end_on_tiny_qwen3(tiny_qwen3, problems_file, tmp_path, thinking):
    out = tmp_path / "eval"
    summary = run_eval(_spec(tiny_qwen3, problems_file, thinking=thinking, n_samples=2), out)
    s = summary["benchmarks"]["sums"]
    assert (s["n_problems"], s["samples_per_problem"], s["n_samples"]) == (5, 2, 10)
    assert set(s["pass_at_k"]) == {"1", "2"}
    lo, hi = s["accuracy_ci95"]
    assert 0 <= lo <= s["accuracy"] <= hi <= 1
    assert summary["settings"]["temperature"] == (0.6 if thinking else 0.7)  # Qwen3's documented defaults
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 10
    assert {(r["id"], r["sample"]) for r in rows} == {(f"p{i}", k) for i in range(5) for k in range(2)}
    assert all(1 <= r["tokens"] <= 6 and r["gold"] == str(2 * int(r["id"][1:])) for r in rows)
    assert all(r["problem"] == f"What is {r['id'][1:]}+{r['id'][1:]}?" for r in rows)  # the question, as asked
    assert "| sums | 5 × 2 |" in (out / "summary.md").read_text()


def test_an_evaluation_folder_is_a_rewrite_input(tiny_qwen3, problems_file, tmp_path, monkeypatch):
    """`mpdistill rewrite --input EVAL_DIR` reads the samples as they are: problem, response as the
    trace, gold as the answer; a sample without its problem (an older evaluation) is named."""
    out = tmp_path / "eval"
    run_eval(_spec(tiny_qwen3, problems_file, thinking=False), out)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["rewrite", "--input", "eval", "--out", "rw.jsonl", "--teacher", str(tiny_qwen3),
                                      "--task", "math", "--max-new-tokens", "4", "--require-gold"])
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    rewrites = [json.loads(line) for line in (tmp_path / "rw.jsonl").read_text().splitlines()]
    assert [(r["problem"], r["trace"], r["answer"]) for r in rewrites] == [
        (s["problem"], s["response"], s["gold"]) for s in samples]
    old = out / "samples.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in s.items() if k != "problem"}) + "\n" for s in samples))
    result = CliRunner().invoke(app, ["rewrite", "--input", "eval/samples.jsonl", "--out", "rw2.jsonl", "--teacher",
                                      str(tiny_qwen3), "--task", "math"])
    assert result.exit_code == 2 and "samples.jsonl:1: field 'problem' is missing" in result.output


def test_an_interrupted_eval_resumes_to_the_same_samples(tiny_qwen3, problems_file, tmp_path):
    full = tmp_path / "full"
    run_eval(_spec(tiny_qwen3, problems_file, temperature=1.0), full)
    part = tmp_path / "part"
    run_eval(_spec(tiny_qwen3, problems_file, temperature=1.0), part)
    lines = (part / "samples.jsonl").read_text().splitlines(keepends=True)
    (part / "samples.jsonl").write_text(lines[0] + lines[1][:10])
    run_eval(_spec(tiny_qwen3, problems_file, temperature=1.0), part)
    assert (part / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()


def test_resuming_with_other_settings_is_refused(tiny_qwen3, problems_file, tmp_path):
    run_eval(_spec(tiny_qwen3, problems_file), tmp_path)
    before = (tmp_path / "samples.jsonl").read_text()
    with pytest.raises(EvalError, match="max_new_tokens: 6 -> 7"):
        run_eval(_spec(tiny_qwen3, problems_file, max_new_tokens=7), tmp_path)
    assert (tmp_path / "samples.jsonl").read_text() == before


def test_missing_answer_field_names_field_and_row(tiny_qwen3, tmp_path):
    from mpdistill.tasks.problems import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "1+1?", "a": "2"}\n{"q": "2+2?"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: .*'a'"):
        run_eval(EvalSpec(model=str(tiny_qwen3), benchmarks=[str(bad)], question_field="q", answer_field="a"),
                 tmp_path / "out")


# --- CLI ---------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_gold_grades_reference_solutions(tmp_path):
    result = runner.invoke(app, ["eval", "--model", "gold", "--benchmarks", "gsm8k,math500", "--limit", "30",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    for name in ("gsm8k", "math500"):
        s = summary["benchmarks"][name]
        assert s["n_problems"] == 30 and s["accuracy"] >= 0.95 and s["mean_tokens"] is None
        assert s["shuffled_gold"]["rate"] <= 0.1
        # Read from the graded samples, it is the grader check's own number.
        from mpdistill.tasks.benchmarks import check_grader, load_benchmark

        assert s["shuffled_gold"] == check_grader(load_benchmark(name, limit=30))["shuffled"]


def test_cli_unknown_benchmark_lists_the_known_ones(tmp_path):
    result = runner.invoke(app, ["eval", "--model", "gold", "--benchmarks", "gsm9k", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "gsm9k" in result.output and "math500" in result.output and "aime24" in result.output


def test_cli_vllm_without_vllm_says_how_to_fix(tiny_qwen3, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    result = runner.invoke(app, ["eval", "--model", str(tiny_qwen3), "--backend", "vllm", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "vllm" in result.output and "--backend transformers" in result.output
    assert not (tmp_path / "samples.jsonl").exists()


def test_cli_eval_then_compare(tiny_qwen3, problems_file, tmp_path):
    common = ["--benchmarks", str(problems_file), "--question-field", "q", "--answer-field", "a",
              "--id-field", "key", "--max-new-tokens", "4", "--no-thinking"]
    for name, seed in (("a", "0"), ("b", "1")):
        result = runner.invoke(app, ["eval", "--model", str(tiny_qwen3), "--out", str(tmp_path / name),
                                     "--seed", seed, *common])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "sums" in result.output
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_default_prompt_asks_for_a_boxed_answer():
    assert MATH_PROMPT.format(problem="Q") == "Q\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_vllm_backend_maps_settings_and_accounting(monkeypatch):
    """The vLLM path against a stand-in ``vllm`` module: what is asked of the engine, what comes back."""
    import sys
    import types

    from mpdistill.rollout import GenerationSettings
    from mpdistill.rollout import vllm as backend

    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            calls["engine"] = kw

        def get_tokenizer(self):
            return types.SimpleNamespace(all_special_ids=[9])

        def generate(self, prompts, params, use_tqdm):
            calls["prompts"], calls["params"] = prompts, params
            done = [types.SimpleNamespace(text="a", token_ids=[5, 6, 9], finish_reason="stop"),
                    types.SimpleNamespace(text="bb", token_ids=[7, 7], finish_reason="length")]
            return [types.SimpleNamespace(outputs=[d]) for d in done]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    monkeypatch.setattr(backend, "require_vllm", lambda: None)
    monkeypatch.setattr(backend, "engine_device", lambda: "cuda")
    gen = backend.VLLMGenerator("m", seed=4, tensor_parallel_size=2)
    assert calls["engine"]["seed"] == 4 and calls["engine"]["tensor_parallel_size"] == 2
    assert (calls["engine"]["dtype"], calls["engine"]["gpu_memory_utilization"]) == ("auto", 0.9)
    assert "enforce_eager" not in calls["engine"]
    monkeypatch.setattr(backend, "engine_device", lambda: "cpu")  # vLLM's CPU build: fp32 as on transformers, eager
    backend.VLLMGenerator("m", seed=4)
    assert {k: calls["engine"][k] for k in ("dtype", "gpu_memory_utilization", "enforce_eager", "enable_chunked_prefill")} == {
        "dtype": "float32", "gpu_memory_utilization": 0.3, "enforce_eager": True, "enable_chunked_prefill": False}
    out = gen.generate([[1, 2], [3]], GenerationSettings(max_new_tokens=8, temperature=0.6, top_p=0.95, top_k=0), [11, 12])
    assert calls["prompts"] == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    p = calls["params"][1]
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens, p.seed) == (0.6, 0.95, -1, 8, 12)
    assert [(g.token_ids, g.truncated) for g in out] == [([5, 6], False), ([7, 7], True)]


def test_budget_and_samples_default_by_model_family_and_set_size(tiny_qwen3, problems_file, tmp_path, monkeypatch):
    """Qwen3 thinks long: its model card's 32,768-token budget (38,912 on competition sets); a set of
    under 100 problems is sampled 8 times per problem. Sampling is stubbed: only the plan is checked."""
    from mpdistill.evaluation import report as eval_report
    from mpdistill.evaluation import runner as eval_runner
    from mpdistill.rollout.hf import Generation

    budgets = []

    class Backend:
        def generate(self, prompts, seeds):
            return [Generation(text="", token_ids=[1] * 3, truncated=True) for _ in prompts]

    def fake_backend(spec, settings, tokenizer):
        budgets.append(settings.max_new_tokens)
        return Backend()

    monkeypatch.setattr(eval_runner, "_load_backend", fake_backend)
    spec = EvalSpec(model=str(tiny_qwen3), benchmarks=["aime24", str(problems_file)], question_field="q",
                    answer_field="a", id_field="key", limit=2, batch_size=64)
    summary = eval_runner.run_eval(spec, tmp_path / "out", console=Console(file=io.StringIO(), width=200))
    s = summary["settings"]
    assert budgets == [38_912] and s["max_new_tokens"] == 38_912 and "competition math" in s["max_new_tokens_source"]
    assert s["n_samples"] == {"aime24": 8, "sums": 8}  # both sets have under 100 problems
    assert summary["benchmarks"]["aime24"]["samples_per_problem"] == 8
    # Every sample here was cut at the budget: the run says so, per benchmark.
    lines = eval_report.truncation_warnings(summary["benchmarks"], s["max_new_tokens"])
    assert len(lines) == 2 and lines[0].startswith("aime24: 100.0% of 16 samples were cut at 38912 new tokens")
    budgets.clear()
    spec = EvalSpec(model=str(tiny_qwen3), benchmarks=["gsm8k"], limit=2, batch_size=64)
    summary = eval_runner.run_eval(spec, tmp_path / "gsm8k", console=Console(file=io.StringIO(), width=200))
    assert budgets == [32_768] and summary["settings"]["n_samples"] == {"gsm8k": 1}  # 1319 problems in the set


def test_the_eval_request_is_left_as_given_and_the_plan_filled_in():
    """``mpdistill eval``'s input and the plan it runs are two objects: resolving fills in a copy."""
    request = EvalSpec(model="embedded:student")
    plan = request.resolved()
    assert (request.task, request.benchmarks, request.prompt_template, request.chat_template) == (None, None, "", None)
    assert plan.task == "chain" and plan.benchmarks == ["chain"] and "{problem}" in plan.prompt_template
    assert plan.chat_template is False  # the embedded models read plain prompts (their mpdistill.json)
