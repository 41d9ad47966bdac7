"""The real-engine tier: every vLLM path against vLLM's CPU build (``make test-vllm``).

These tests start real vLLM engines and a real OpenAI-compatible vLLM server on loopback. They
are collected only where the ``vllm`` module is installed (``.venv-vllm``, made by ``make
vllm-env``) and carry the ``vllm`` marker, which the default suite deselects.

Everything that touches an engine runs in a subprocess (``mpdistill`` commands, or a short
script), as a user would run it: vLLM starts engine processes of its own, and each test's engine
is gone when its process ends.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]

QWEN3_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "qwen3"


@pytest.fixture(scope="session")
def tiny_qwen3_vllm(tmp_path_factory):
    """A random two-layer Qwen3 with the real Qwen3 tokenizer and chat template, heads 32 wide (a
    size vLLM's CPU attention has kernels for), saved in float32."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("tiny_qwen3_vllm") / "model"
    tok = AutoTokenizer.from_pretrained(QWEN3_FIXTURES)
    real = json.loads((QWEN3_FIXTURES / "Qwen3-1.7B.json").read_text())
    small = {**real, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 2048}
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**small)).to(torch.float32).save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def chain_traces(tmp_path_factory):
    """The embedded student's own traces of 48 held-out chain problems (sampled at its training
    temperature), as ``mpdistill rewrite`` input: ``{"problem", "trace", "answer"}``."""
    from mpdistill.run.pipeline import load_model
    from mpdistill.rollout import GenerationSettings, generate_texts
    from mpdistill.tasks.problems import chain_problems

    student, tok = load_model("embedded:student")
    problems = chain_problems(48, 7, split="eval")
    gens = generate_texts(student, tok, [p["prompt"] for p in problems],
                          GenerationSettings(max_new_tokens=200, temperature=1.0), seed=0)
    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    path.write_text("".join(json.dumps({"problem": p["prompt"], "trace": g.text, "answer": p["answer"]}) + "\n"
                            for p, g in zip(problems, gens)))
    return path
