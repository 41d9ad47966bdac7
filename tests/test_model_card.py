"""Every saved student carries a model card: the models, method, settings, data, steps, license, citation."""

import json

import pytest
from huggingface_hub import ModelCard

from mpdistill.run.recipe import recipe_from_dict
from mpdistill.models.card import CardFacts, render_card, set_card_evaluation, write_card
from mpdistill.trainers.config import MPDConfig
from mpdistill.run.pipeline import train
from mpdistill.tasks import chain


def _recipe(tiny_pair, method="mpd", **training):
    return recipe_from_dict({
        "method": method,
        "student": str(tiny_pair / "student"),
        "teacher": str(tiny_pair / "teacher"),
        "data": {"n_train": 16},
        "training": {"steps": 2, "batch_size": 4, "max_completion_length": 16, "logging_steps": 1,
                     "learning_rate": 2e-4, **training},
        "rewrite": {"prompt_template": chain.REWRITE_TEMPLATE.replace("{prompt}", "{problem}"),
                    "use_chat_template": False, "max_new_tokens": 16, "max_ratio": 0.7},
    })


@pytest.mark.parametrize("method", ["mpd", "opd"])
def test_a_trained_model_folder_has_a_card_saying_how_it_was_made(tiny_pair, tmp_path, method):
    # Gradient checkpointing turns the model's KV cache off while it trains; the saved folder is for
    # generation, and for sharing: no pickle in it (a checkpoint keeps transformers' training_args.bin).
    model_dir = train(_recipe(tiny_pair, method, gradient_checkpointing=True, save_steps=1), tmp_path / "run")
    assert json.loads((model_dir / "config.json").read_text())["use_cache"] is True
    assert not (model_dir / "training_args.bin").exists() and (tmp_path / "run" / "trainer" / "checkpoint-2" / "training_args.bin").exists()
    card = ModelCard.load(model_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"mpdistill", "distillation", method} <= set(card.data.tags)
    text = card.text
    assert f"# {method.upper()}-distilled student of `student`" in text
    assert "after 2 optimizer steps" in text and "`teacher` as the teacher" in text
    assert "| `learning_rate` | 0.0002 |" in text and "| `samples per step` | 4 |" in text
    assert "16 training problems of the `chain` task, from `embedded:chain`" in text
    assert ("### Rewrites" in text and "| `max_ratio` | 0.7 |" in text) == (method == "mpd")
    assert "Not evaluated yet: `mpdistill eval --model MODEL_DIR --benchmarks" in text and "arXiv:2605.08776" in text
    assert "trl" in card.data.tags and "## Framework versions" in text and "- TRL " in text
    assert str(tmp_path) not in card.content and str(tiny_pair) not in card.content  # no machine paths
    # The quick start runs as written, with the folder's path for MODEL_DIR.
    snippet = text.split("## Quick start", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    from mpdistill.tasks import get_task

    # Plain text, as the embedded models were trained: one of the chain task's own prompts.
    assert f"tokenizer({get_task('chain').problems(1, seed=0)[0]['prompt']!r}" in snippet
    exec(snippet.replace("'MODEL_DIR'", repr(str(model_dir))), {})


def test_hub_names_link_to_the_hub_and_the_embedded_default_is_apache():
    args = MPDConfig("out", task="math", max_steps=5, report_to="none")
    card = render_card(method="MPD", rewrites=True, args=args, steps=5,
                       facts=CardFacts(student="Qwen/Qwen3-1.7B", teacher="Qwen/Qwen3-8B", dataset="openai/gsm8k"))
    parsed = ModelCard(card)
    assert parsed.data.base_model == "Qwen/Qwen3-1.7B" and parsed.data.datasets == ["openai/gsm8k"]
    assert parsed.data.license is None and "The base model's license applies" in card
    assert "[Qwen/Qwen3-8B](https://huggingface.co/Qwen/Qwen3-8B) as the teacher" in card
    embedded = ModelCard(render_card(method="MPD", rewrites=True, args=args, steps=5,
                                     facts=CardFacts(student="embedded:student", teacher="embedded:teacher")))
    assert embedded.data.license == "apache-2.0" and embedded.data.base_model is None


def test_an_evaluation_replaces_only_its_own_section(tmp_path):
    args = MPDConfig("out", task="chain", max_steps=5, report_to="none")
    write_card(tmp_path, render_card(method="OPD", rewrites=False, args=args, steps=5, facts=CardFacts()))
    assert set_card_evaluation(tmp_path, "| model | accuracy |\n|---|---|\n| x | 90% |")
    assert set_card_evaluation(tmp_path, "| model | accuracy |\n|---|---|\n| y | 91% |")  # again: replaced, not added
    text = (tmp_path / "README.md").read_text()
    assert "| y | 91% |" in text and "| x | 90% |" not in text and "Not evaluated yet" not in text
    assert text.count("## Evaluation") == 1 and text.index("## Evaluation") < text.index("## License")
    assert not set_card_evaluation(tmp_path / "nowhere", "x")


def test_settings_that_do_not_apply_to_a_method_are_left_out():
    args = MPDConfig("out", task="chain", max_steps=5, report_to="none", beta=0.3, temperature=0.7)
    sft = render_card(method="Rewrite-SFT", rewrites=True, args=args, steps=5, facts=CardFacts(), kl_loss=False)
    assert "beta" not in sft and "| `student sampling temperature` | 0.7 |" in sft and "### Rewrites" in sft
    kd = render_card(method="Off-policy KD", rewrites=False, args=args, steps=5, facts=CardFacts(), student_samples=False)
    assert "| `beta (0 = forward KL, 1 = reverse KL)` | 0.3 |" in kd and "student sampling temperature" not in kd
    assert "### Teacher samples" in kd and "### Rewrites" not in kd
    adapter = ModelCard(render_card(method="MPD", rewrites=True, args=args, steps=5, facts=CardFacts(), lora="adapter"))
    merged = ModelCard(render_card(method="MPD", rewrites=True, args=args, steps=5, facts=CardFacts(), lora="merged"))
    assert (adapter.data.library_name, merged.data.library_name) == ("peft", "transformers")
    assert "this folder holds the adapter" in adapter.text and "merged into these weights" in merged.text


def test_a_local_base_models_own_card_gives_the_license(tmp_path):
    base = tmp_path / "my-base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n\n# my base\n")
    args = MPDConfig("out", task="chain", max_steps=5, report_to="none")
    card = ModelCard(render_card(method="MPD", rewrites=True, args=args, steps=5, facts=CardFacts(student=str(base))))
    assert card.data.license == "mit" and card.data.base_model is None and "`mit`, the base model's license" in card.text
    (base / "README.md").write_text("# no metadata\n")
    unknown = render_card(method="MPD", rewrites=True, args=args, steps=5, facts=CardFacts(student=str(base)))
    assert ModelCard(unknown).data.license is None and "The base model's license applies: see `my-base`" in unknown


def test_a_folder_saved_through_the_python_api_is_the_same(tiny_pair, tmp_path):
    from datasets import Dataset

    from mpdistill import OPDTrainer
    from mpdistill.tasks import get_task

    args = MPDConfig(str(tmp_path / "run"), task="chain", max_steps=1, per_device_train_batch_size=2,
                     max_completion_length=8, gradient_checkpointing=True, report_to="none")
    trainer = OPDTrainer(str(tiny_pair / "student"), str(tiny_pair / "teacher"), args,
                         train_dataset=Dataset.from_list(get_task("chain").problems(2, 0)))
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["use_cache"] is True
    assert not (tmp_path / "saved" / "training_args.bin").exists()
    assert trainer.model.config.use_cache is False  # training's own setting is left as it was


def test_the_quick_start_of_a_chat_model_uses_its_template_and_thinking_switch(tiny_qwen3):
    """The snippet's prompt is the task's as training rendered it (single braces, the thinking switch),
    and the snippet runs as written on a model with the real Qwen3 tokenizer and template."""
    from mpdistill import MPDConfig
    from mpdistill.models.card import quick_start

    args = MPDConfig("out", task="math", chat_template_kwargs={"enable_thinking": False}, max_completion_length=8)
    snippet = quick_start("MODEL_DIR", args, "chat").split("```python\n", 1)[1].split("```", 1)[0]
    assert "\\\\boxed{}" in snippet and "enable_thinking=False" in snippet
    scope = {}
    exec(snippet.replace("'MODEL_DIR'", repr(str(tiny_qwen3))), scope)
    prompt = scope["tokenizer"].decode(scope["inputs"]["input_ids"][0])
    assert prompt.endswith("<think>\n\n</think>\n\n") and "\\boxed{}" in prompt
