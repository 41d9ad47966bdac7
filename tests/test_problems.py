"""Problem sets: user files are validated up front with the file, row and field named."""

import json
import random
from pathlib import Path

import pytest

from mpdistill.tasks import chain
from mpdistill.tasks.problems import DataError, chain_problems, load_problems


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_valid_rows_load_as_plain_prompts(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"problem": "What is 2+2?", "answer": "4", "extra": 1},
        {"problem": "What is 3*3?", "answer": 9},
    ])
    rows = load_problems(str(path))
    assert rows == [
        {"prompt": "What is 2+2?", "problem": "What is 2+2?", "question": "What is 2+2?", "answer": "4"},
        {"prompt": "What is 3*3?", "problem": "What is 3*3?", "question": "What is 3*3?", "answer": "9"},  # numbers become strings
    ]


def test_chat_style_gives_a_user_message(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "What is 2+2?", "answer": "4"}])
    rows = load_problems(str(path), prompt_style="chat")
    assert rows == [{"prompt": [{"role": "user", "content": "What is 2+2?"}], "problem": "What is 2+2?",
                     "question": "What is 2+2?", "answer": "4"}]


def test_custom_fields_blank_lines_and_limit(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"question": f"q{i}", "solution": str(i)}) for i in range(5)]
    path.write_text(lines[0] + "\n\n   \n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")
    rows = load_problems(str(path), question_field="question", answer_field="solution", limit=3)
    assert [(r["problem"], r["answer"]) for r in rows] == [("q0", "0"), ("q1", "1"), ("q2", "2")]


def test_no_answer_field_means_no_answer(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "p"}])
    assert load_problems(str(path), answer_field=None) == [{"prompt": "p", "problem": "p", "question": "p", "answer": None}]


def test_answer_zero_is_an_answer(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "p", "answer": 0}])
    assert load_problems(str(path))[0]["answer"] == "0"


def test_missing_question_names_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"problem": "ok", "answer": "1"},
        {"question": "wrong field", "answer": "2"},
    ])
    with pytest.raises(DataError) as info:
        load_problems(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:2: ")  # file:line, as for a JSON error
    assert "'problem'" in message
    assert "(fields: ['answer', 'question'])" in message


@pytest.mark.parametrize("bad", ["", "   ", None, 5, ["a"]])
def test_empty_or_non_text_question_is_rejected(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": bad, "answer": "1"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing or empty field 'problem'"):
        load_problems(str(path))


def test_missing_answer_names_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"problem": "a", "answer": "1"},
        {"problem": "b", "answer": "2"},
        {"problem": "c"},
    ])
    with pytest.raises(DataError) as info:
        load_problems(str(path))
    assert str(info.value) == f"{path}:3: missing answer field 'answer'"


@pytest.mark.parametrize("bad", ["", "  ", None])
def test_blank_answer_is_missing(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "a", "gold": bad}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing answer field 'gold'"):
        load_problems(str(path), answer_field="gold")


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_problems(str(path))
    assert str(info.value) == f"{path}: the dataset is empty"


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": \n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_problems(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:3: not valid JSON (")


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"text"', "str"), ("7", "int"), ("null", "NoneType")])
def test_non_object_line_is_an_error(tmp_path, line, kind):
    path = tmp_path / "d.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_problems(str(path))
    assert str(info.value) == f"{path}:2: expected a JSON object, got {kind}"


def test_parquet_file_loads(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "d.parquet"
    pd.DataFrame({"problem": ["1+1?", "2+3?"], "answer": ["2", "5"], "other": [0, 1]}).to_parquet(path)
    rows = load_problems(str(path), prompt_style="chat")
    assert rows == [
        {"prompt": [{"role": "user", "content": "1+1?"}], "problem": "1+1?", "question": "1+1?", "answer": "2"},
        {"prompt": [{"role": "user", "content": "2+3?"}], "problem": "2+3?", "question": "2+3?", "answer": "5"},
    ]


def test_parquet_missing_question_column(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "d.parquet"
    pd.DataFrame({"question": ["1+1?"], "answer": ["2"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"d\.parquet: row 1: missing or empty field 'problem'"):
        load_problems(str(path))


def test_parquet_null_answer_is_missing(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "d.parquet"
    pd.DataFrame({"problem": ["a", "b"], "answer": ["1", None]}).to_parquet(path)
    with pytest.raises(DataError, match=r"d\.parquet: row 2: missing answer field 'answer'"):
        load_problems(str(path))


def test_missing_local_file_is_a_data_error(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError) as info:
        load_problems(str(missing))
    assert str(info.value) == f"{missing}: no such file"  # not sent to the Hub as a dataset name


# ------------------------------------------------------------------ the embedded chain task


def test_chain_problems_are_distinct_well_formed_and_of_their_split():
    rows = chain_problems(300, seed=5, split="validation")
    prompts = [r["prompt"] for r in rows]
    assert len(rows) == 300 and len(set(prompts)) == 300
    for r in rows:
        assert r["problem"] == r["prompt"]
        problem = chain.ChainProblem.parse(r["prompt"])
        assert chain.split_of(problem) == "validation"
        assert r["answer"] == problem.answer == str(problem.value)


def test_chain_problems_respect_exclude():
    first = chain_problems(50, seed=1)
    excluded = {r["prompt"] for r in first[:25]}
    again = chain_problems(50, seed=1, exclude=excluded)
    assert not excluded & {r["prompt"] for r in again}
    assert len({r["prompt"] for r in again}) == 50
    # Excluding only skips draws: the same stream continues past the excluded prompts.
    assert again[:25] == first[25:]


def test_chain_problems_do_not_mutate_exclude():
    excluded = {"Q:1+2+3+4\n"}
    chain_problems(5, seed=0, exclude=excluded)
    assert excluded == {"Q:1+2+3+4\n"}


def test_chain_problems_are_reproducible_from_the_seed():
    assert chain_problems(40, seed=3) == chain_problems(40, seed=3)
    assert chain_problems(40, seed=3) != chain_problems(40, seed=4)
    # Independent of the global random state.
    random.seed(123)
    a = chain_problems(10, seed=3)
    random.seed(456)
    assert chain_problems(10, seed=3) == a


def test_chain_problem_splits_are_disjoint():
    train = {r["prompt"] for r in chain_problems(200, seed=0, split="train")}
    held_out = {r["prompt"] for r in chain_problems(200, seed=0, split="eval")}
    assert not train & held_out


def test_chain_problems_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        chain_problems(1, seed=0, split="test")


def test_a_worked_solution_gives_its_last_boxed_answer_as_gold(tmp_path):
    """The MATH recipe's data: lighteval's layout, the gold answer read from the solution's last
    \\boxed{} (data.answer_from: boxed), as MATH-500's own answer field has it."""
    from mpdistill.run.recipe import load_recipe
    from mpdistill.run.pipeline import training_problems
    from mpdistill.recipes import shipped_path
    from mpdistill.tasks import get_task

    sample = Path(__file__).parent / "fixtures" / "math_lighteval" / "train_sample.jsonl"
    recipe = load_recipe(shipped_path("qwen3-1.7b_from_qwen3-8b_math"), {"data": {"train": str(sample), "n_train": 6}})
    rows = training_problems(recipe)
    shipped = Path(__file__).parents[1] / "mpdistill" / "assets" / "benchmarks" / "math500" / "test.jsonl"
    math500 = [json.loads(line) for line in shipped.read_text().splitlines()[:6]]
    math = get_task("math")
    assert [r["question"] for r in rows] == [m["problem"] for m in math500]
    assert all(math.answers_match(r["answer"], m["answer"]) for r, m in zip(rows, math500)), [r["answer"] for r in rows]
    assert rows[0]["prompt"][0]["content"].endswith("put your final answer within \\boxed{}.")
    no_box = tmp_path / "d.jsonl"
    no_box.write_text(json.dumps({"problem": "p", "solution": "It is 4."}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'solution' has no \\boxed\{\} answer to read"):
        load_problems(str(no_box), answer_field="solution", answer_from="boxed")
