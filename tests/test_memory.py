"""The dry run's memory estimate (mpdistill/run/memory.py): each term that a CPU can measure is held to
the tensors a real run allocates, and the shipped Qwen3 recipe's plan prints it offline."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from mpdistill.run.recipe import recipe_from_dict
from mpdistill.run.memory import (REWRITE_INSTRUCTION_TOKENS, estimate, kv_bytes_per_token, lora_parameter_count,
                              parameter_count, peak)

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True,
             pad_token_id=0, eos_token_id=1)


def test_the_kv_term_is_the_cache_transformers_fills():
    config = Qwen3Config(**SMALL)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    batch, prompt, new = 3, 7, 9
    out = model.generate(torch.randint(2, 64, (batch, prompt)), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    cache = out.past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    per_token = kv_bytes_per_token(config, 4)
    # The estimate counts prompt + every new token; the cache holds all but the last one sampled.
    assert held == per_token * batch * (prompt + new - 1)


def test_weights_gradients_and_adamw_are_the_parameters_counted():
    config = Qwen3Config(**SMALL)
    model = Qwen3ForCausalLM(config)
    n = parameter_count(config)
    assert n == sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randint(2, 64, (2, 5)), labels=torch.randint(2, 64, (2, 5))).loss.backward()
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step")
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    assert (state, grads) == (n * 8, n * 4)


def test_the_lora_term_is_the_adapter_peft_builds():
    peft = pytest.importorskip("peft")
    config = Qwen3Config(**SMALL)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(Qwen3ForCausalLM(config), peft.LoraConfig(r=4, target_modules=targets))
    assert lora_parameter_count(config, 4, targets) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def _recipe(**training):
    return recipe_from_dict({"method": "mpd", "task": "math", "data": {"train": "x.jsonl"},
                             "training": {"batch_size": 2, "gradient_accumulation_steps": 8,
                                          "max_completion_length": 4096, "bf16": True, **training},
                             "rewrite": {"batch_size": 16, "max_new_tokens": 4096}})


def test_the_phases_are_sized_as_trl_samples_and_the_rewriter_batches():
    student, teacher = Qwen3Config(**SMALL), Qwen3Config(**{**SMALL, "num_hidden_layers": 5})
    parts = {p.name: p for p in estimate(_recipe(), student, teacher, prompt_tokens=100, rewrites=True,
                                         teacher_samples=False)}
    # 2 x 8 accumulation: the whole step's 16 sequences at once; 16 rewrites of prompt + instruction + trace + rewrite.
    assert parts["student KV cache while sampling"].bytes == kv_bytes_per_token(student, 2) * 16 * (100 + 4096)
    assert parts["teacher KV cache while rewriting"].bytes == kv_bytes_per_token(teacher, 2) * 16 * (
        100 + REWRITE_INSTRUCTION_TOKENS + 4096 * 2)
    fewer = {p.name: p for p in estimate(_recipe(gradient_accumulation_steps=1), student, teacher, prompt_tokens=100,
                                         rewrites=True, teacher_samples=False)}
    assert fewer["teacher KV cache while rewriting"].bytes == kv_bytes_per_token(teacher, 2) * 2 * (
        100 + REWRITE_INSTRUCTION_TOKENS + 8192)
    # The peak: everything held all run, plus the largest phase once; sharding divides the held parts.
    static = sum(p.bytes for p in parts.values() if p.static)
    assert peak(list(parts.values())) == static + parts["teacher KV cache while rewriting"].bytes
    assert peak(list(parts.values()), 4, sharded=True) == pytest.approx(
        static / 4 + parts["teacher KV cache while rewriting"].bytes, abs=1)


def test_the_rewrite_instruction_allowance_covers_the_built_in_prompts():
    """What a rewrite prompt adds to the problem and the trace, counted with Qwen3's tokenizer and chat
    template (the teacher's thinking off, as the recipes ask): the estimate's allowance is not less."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from mpdistill.tasks.prompts import PROMPT_TEMPLATES, encode_message
    from mpdistill.rewriting.rewrite import RewriteSettings

    tok = AutoTokenizer.from_pretrained(Path(__file__).parent / "fixtures" / "qwen3")
    for name, template in PROMPT_TEMPLATES.items():
        rendered = RewriteSettings(prompt_template=template).render("", "")
        added = len(encode_message(tok, rendered, chat=True, template_kwargs={"enable_thinking": False}))
        assert added <= REWRITE_INSTRUCTION_TOKENS, (name, added)


def test_a_peak_past_the_visible_gpu_is_an_error():
    from mpdistill.run import dry_run

    recipe = _recipe()
    student, teacher = (dry_run.describe_model(key, f"Qwen/{name}")[0]
                        for key, name in (("student", "Qwen3-1.7B"), ("teacher", "Qwen3-8B")))
    devices = {"cuda": 1, "names": ["a 40 GB GPU"], "memory": [40e9]}
    memory, errors, warnings = dry_run.describe_memory(recipe, student, teacher, {"rows": None, "longest_prompt": None}, 1, devices)
    assert errors and "passes the 40.0 GB of the visible GPU" in errors[0] and not warnings
    assert memory["peak_bytes"] > 40e9 and memory["prompt_tokens"] == 256  # the assumed prompt: no data here
    # Over 8 processes the held parts shrink below it, if the launch shards them (ZeRO-3, FSDP): a warning.
    _, errors, warnings = dry_run.describe_memory(recipe, student, teacher, {"rows": None, "longest_prompt": None}, 8, devices)
    assert errors == [] and "fits the 40.0 GB of the visible GPU only with ZeRO-3 or FSDP" in warnings[0]
