"""The real-model path on tiny random Qwen3 models with the real Qwen3 tokenizer and chat template."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from mpdistill.config import recipe_from_dict
from mpdistill.pipeline import load_model, train
from mpdistill.rewrite import TransformersRewriter
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
