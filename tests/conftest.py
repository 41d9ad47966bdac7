import os

import pytest
import torch

# Tests must never reach the Hub, and must be reproducible on any core count.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

from mpdistill import embedded  # noqa: E402

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
