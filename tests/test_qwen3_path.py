"""The real-model path on tiny random Qwen3 models with the real Qwen3 tokenizer and chat template."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from mpdistill.run.recipe import recipe_from_dict
from mpdistill.run.pipeline import load_model, train
from mpdistill.rewriting.rewrite import TransformersRewriter
from mpdistill.rollout import GenerationSettings

FIXTURES = Path(__file__).parent / "fixtures" / "qwen3"


@pytest.fixture(scope="module")
def qwen3_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3")
    tok = AutoTokenizer.from_pretrained(FIXTURES)
    real = json.loads((FIXTURES / "Qwen3-1.7B.json").read_text())
    for name, hidden, layers in (("student", 32, 1), ("teacher", 64, 2)):
        small = {**real, "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
                 "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
        model = Qwen3ForCausalLM(Qwen3Config(**small))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    problems = root / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "final": str(2 * i)}) + "\n"
                                for i in range(8)))
    return root


def test_chat_teacher_rewrites_through_its_chat_template(qwen3_pair):
    teacher, tok = load_model(str(qwen3_pair / "teacher"))
    rw = TransformersRewriter(teacher, tok, GenerationSettings(max_new_tokens=4), chat_template_kwargs={"enable_thinking": False})
    ids = rw._encode("Rewrite this.")
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\nRewrite this.<|im_end|>\n<|im_start|>assistant\n")
    assert text.endswith("<think>\n\n</think>\n\n")
    out = rw.rewrite(["Rewrite this.", "And this."])
    assert len(out) == 2
    assert all(isinstance(o.text, str) and o.error is None for o in out)
    assert all("Rewrite this." not in o.text for o in out)  # only the completion comes back


def test_mpd_step_on_qwen3_shapes_with_chat_prompts(qwen3_pair, tmp_path):
    recipe = recipe_from_dict({
        "method": "mpd", "task": "math",
        "student": str(qwen3_pair / "student"), "teacher": str(qwen3_pair / "teacher"),
        "data": {"train": str(qwen3_pair / "problems.jsonl"), "question_field": "question", "answer_field": "final",
                 "prompt_style": "chat", "n_train": 8},
        "training": {"steps": 1, "batch_size": 4, "max_completion_length": 6, "logging_steps": 1},
        "rewrite": {"max_new_tokens": 6, "batch_size": 4},
    })
    model_dir = train(recipe, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert all(r["prompt"][0]["role"] == "user" and r["prompt"][0]["content"].startswith("What is") for r in rows)
    # A random model never writes a final answer, so nothing is accepted and nothing crashes.
    assert all(not r["accepted"] and r["reason"] == "student_unparsed" for r in rows)
    assert (model_dir / "config.json").exists()


# -- one prompt for training, the rewrite prompt and evaluation ------------------------------------------


def _math_recipe(qwen3_pair, **extra):
    data = {
        "method": "mpd", "student": str(qwen3_pair / "student"), "teacher": str(qwen3_pair / "teacher"),
        "data": {"train": str(qwen3_pair / "problems.jsonl"), "question_field": "question", "answer_field": "final",
                 "prompt_style": "chat", "n_train": 8},
        "training": {"steps": 1, "batch_size": 4, "max_completion_length": 6, "logging_steps": 1},
        "rewrite": {"max_new_tokens": 6, "batch_size": 4},
    }
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return recipe_from_dict(data)


def test_training_the_rewrite_prompt_and_evaluation_see_the_same_problem_text(qwen3_pair):
    from mpdistill.evaluation.settings import EvalSpec
    from mpdistill.run.pipeline import training_problems
    from mpdistill.rewriting.rewrite import rewrite_settings_from
    from mpdistill.tasks.prompts import PromptEncoder

    recipe = _math_recipe(qwen3_pair)
    assert recipe.task == "math"  # chosen from the data: a dataset for real models
    row = training_problems(recipe)[0]
    trained = row["prompt"][0]["content"]
    spec = EvalSpec(model=str(qwen3_pair / "student"), benchmarks=["gsm8k"]).resolved()
    tok = AutoTokenizer.from_pretrained(qwen3_pair / "student")
    evaluated = PromptEncoder(tok, template=spec.prompt_template).text("What is 0+0?")
    expected = "What is 0+0?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert trained == evaluated == row["problem"] == expected
    # The rewrite prompt shows the question alone: an instruction to solve it would invite the
    # teacher to solve instead of rewrite (the trainer takes the row's question for it).
    assert row["question"] == "What is 0+0?"
    rewrite_prompt = rewrite_settings_from(recipe.rewrite).render(row["question"], "some trace")
    assert "Problem:\nWhat is 0+0?\n\nStudent solution:\nsome trace" in rewrite_prompt
    assert "Please reason" not in rewrite_prompt
    # One override changes all three for training: the recipe's own template.
    custom = _math_recipe(qwen3_pair, data={"prompt_template": "Solve: {problem} Box it."})
    row = training_problems(custom)[0]
    assert row["prompt"][0]["content"] == row["problem"] == "Solve: What is 0+0? Box it."


def test_training_answers_are_normalised_as_evaluation_golds(tmp_path, qwen3_pair):
    from mpdistill.run.pipeline import training_problems

    data = tmp_path / "gsm8k_train.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "Natalia sold 48/2 = 24 clips.\n#### 1,072"}) + "\n")
    recipe = _math_recipe(qwen3_pair, data={"train": str(data), "answer_field": "answer", "n_train": 1})
    assert training_problems(recipe)[0]["answer"] == "1072"


# -- MPD must not silently become OPD --------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    ({}, "chain"),
    ({"data": {"train": "x.jsonl"}, "student": "Qwen/Qwen3-1.7B", "teacher": "Qwen/Qwen3-8B"}, "math"),
    ({"task": "chain", "data": {"train": "x.jsonl"}}, "chain"),
])
def test_the_task_is_chosen_from_the_data_where_that_is_unambiguous(data, expected):
    assert recipe_from_dict(data).task == expected


@pytest.mark.parametrize("data, message", [
    ({"task": "math"}, "task: math with data.train embedded:chain: the embedded chain task's answers are 'A:<digit>'"),
    ({"data": {"train": "x.jsonl"}}, "task: cannot be chosen for data.train 'x.jsonl' with the embedded student and "
                                     "teacher: set task: chain"),
    ({"data": {"prompt_template": "{problem}?"}}, "data.prompt_template: the embedded chain task has its own prompt"),
    ({"data": {"train": "x.jsonl", "prompt_template": "no field"}, "task": "math"}, "must contain {problem}"),
    ({"data": {"train": "x.jsonl", "prompt_template": "{problem} {x}"}, "task": "math"}, "cannot be filled in"),
])
def test_an_ambiguous_or_wrong_task_is_refused(data, message):
    from mpdistill.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data)
    assert message in " ".join(str(info.value).split())


def test_a_run_whose_traces_have_no_readable_answer_warns_in_the_console_and_the_log(qwen3_pair, tmp_path, caplog):
    """A random model never writes an answer: every trace is student_unparsed, MPD rewrites nothing."""
    recipe = _math_recipe(qwen3_pair, training={"steps": 2}, rewrite={"monitor_window": 1})
    with caplog.at_level("WARNING", logger="mpdistill.trainers.mix_monitor"):
        train(recipe, tmp_path)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    warnings = [e["mpd/warning"] for e in log if "mpd/warning" in e]
    assert len(warnings) == 2 and all(w.startswith("MPD is mostly falling back here: 100% of the student's traces over steps")
                                      and "'math' task can read" in w for w in warnings)
    assert sum("MPD is mostly falling back here" in r.getMessage() for r in caplog.records) == 2


def test_a_floor_on_readable_answers_stops_the_run_naming_the_cause(qwen3_pair, tmp_path):
    from mpdistill.trainers.mix_monitor import MixFloorHalt

    recipe = _math_recipe(qwen3_pair, training={"steps": 4},
                          rewrite={"monitor_window": 2, "min_parsed_fraction": 0.5})
    with pytest.raises(MixFloorHalt) as info:
        train(recipe, tmp_path)
    message = str(info.value)
    assert message.startswith("training stopped at step 2: rewrite.min_parsed_fraction is 0.5: 100% of the "
                              "student's traces over steps 1-2 (8 samples) have no final answer the 'math' task")
    assert not (tmp_path / "model").exists()
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {0, 1}  # stopped after the window, not at the end


def test_a_teacher_template_that_renders_training_prompts_differently_is_reported(qwen3_pair, caplog):
    from mpdistill.run.checks import warn_if_templates_differ

    recipe = _math_recipe(qwen3_pair)
    student = AutoTokenizer.from_pretrained(qwen3_pair / "student")
    teacher = AutoTokenizer.from_pretrained(qwen3_pair / "teacher")
    assert not warn_if_templates_differ(recipe, student, teacher)  # one family, one template
    teacher.chat_template = teacher.chat_template.replace("<|im_start|>", "<|im_start|> ")
    with caplog.at_level("WARNING", logger="mpdistill.run.pipeline"):
        assert warn_if_templates_differ(recipe, student, teacher)
    assert "the teacher scores prompts in the student's format" in caplog.text
