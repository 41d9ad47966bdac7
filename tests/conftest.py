import os

import pytest
import torch

# Tests must never reach the Hub, and must be reproducible on any core count.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

from mpdistill.models import worlds as embedded  # noqa: E402

# What a tier measured (the real-engine and real-model tiers), printed at the end of its run under
# its title: a test passes each line to the ``report`` fixture.
TIER_TITLES = {"real_engine": "vLLM tier: measured", "real_lm": "real-model tier: measured"}
FIGURES: dict[str, list[str]] = {}


def pytest_terminal_summary(terminalreporter):
    for title, lines in FIGURES.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def report(request):
    """``report(line)``: a figure this test measured, listed under its tier's title at the end."""
    return FIGURES.setdefault(TIER_TITLES.get(request.path.parent.name, "measured"), []).append


TINY = embedded.ModelShape(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """A randomly initialised tiny student and a slightly larger teacher sharing the embedded tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    tok = embedded.build_tokenizer()
    for name, shape, seed in (("student", TINY, 0), ("teacher", embedded.ModelShape(48, 96, 2, 2, 1, 24), 1)):
        model = embedded.make_model(shape, tok, seed)
        model.generation_config.max_new_tokens = 24
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


QWEN3_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "qwen3")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    """A randomly initialised one-layer Qwen3 with the real Qwen3 tokenizer and chat template."""
    import json

    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("tiny_qwen3") / "model"
    tok = AutoTokenizer.from_pretrained(QWEN3_FIXTURES)
    with open(os.path.join(QWEN3_FIXTURES, "Qwen3-1.7B.json")) as f:
        real = json.load(f)
    small = {**real, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**small)).save_pretrained(root)
    tok.save_pretrained(root)
    return root
