"""Recipes, launch configs and LoRA: `train --dry-run` plans every shipped recipe offline, without weights;
shipped recipes are named on the command line and `mpdistill recipes` lists, locates and copies them."""

import json
from pathlib import Path

import pytest
import torch

from mpdistill import recipes as shipped
from mpdistill.run.recipe import recipe_from_dict
from mpdistill.run.pipeline import build_trainer, load_model, train, training_problems
from mpdistill.tasks import chain


def _lora_recipe(tiny_pair, **training):
    return recipe_from_dict(
        {
            "method": "mpd",
            "student": str(tiny_pair / "student"),
            "teacher": str(tiny_pair / "teacher"),
            "data": {"n_train": 8},
            "training": {"steps": 1, "batch_size": 4, "max_completion_length": 16, "logging_steps": 1,
                         "learning_rate": 1e-2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **training},
            "rewrite": {"prompt_template": chain.REWRITE_TEMPLATE.replace("{prompt}", "{problem}"),
                        "use_chat_template": False, "max_new_tokens": 16},
        }
    )


def test_lora_step_trains_only_the_adapter_and_the_run_saves_a_loadable_student(tiny_pair, tmp_path):
    recipe = _lora_recipe(tiny_pair)
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    base_before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path / "a")
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trainer.train()
    after = dict(model.named_parameters())
    assert any(not torch.equal(lora_before[n], after[n]) for n in lora_before)
    base_after = model.get_base_model().state_dict()
    for key, value in base_before.items():
        # LoRA wraps each adapted Linear: its frozen weight moves to `<name>.base_layer.weight`.
        wrapped = key.rsplit(".", 1)[0] + ".base_layer." + key.rsplit(".", 1)[1]
        assert torch.equal(value, base_after[wrapped] if wrapped in base_after else base_after[key]), key

    run = tmp_path / "run"
    model_dir = train(recipe, run)
    assert (run / "adapter" / "adapter_config.json").exists()
    merged, merged_tok = load_model(str(model_dir))
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert merged.config.vocab_size == len(merged_tok)
    differs = any(not torch.equal(base_before[k], v) for k, v in merged.state_dict().items() if k in base_before)
    assert differs  # the trained adapter is folded into the saved weights


# --- train --dry-run ---------------------------------------------------------------------------

from typer.testing import CliRunner  # noqa: E402

from mpdistill.run import dry_run as dry_run_mod  # noqa: E402
from mpdistill.cli import app  # noqa: E402

runner = CliRunner()
RECIPES = shipped.recipe_names()


@pytest.fixture
def bf16_gpu(monkeypatch):
    """Plan as if on a bf16-capable GPU, so recipes that ask for bf16 are judged on everything else."""
    monkeypatch.setattr(dry_run_mod, "probe_devices", lambda: {"cuda": 1, "names": ["test GPU"], "bf16_supported": True})


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(dry_run_mod, "probe_devices", lambda: {"cuda": 0, "names": [], "bf16_supported": False})


def dry_run(path, *extra, code=0):
    result = runner.invoke(app, ["train", str(path), "--dry-run", *extra], env={"COLUMNS": "400"})
    assert result.exit_code == code, result.output
    return result.output


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_every_shipped_recipe_exists():
    assert set(RECIPES) >= {"embedded", "qwen3-1.7b_from_qwen3-8b"}
    assert all(shipped.shipped_path(name).is_file() for name in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_shipped_recipe_plans_offline_without_errors(recipe, bf16_gpu, monkeypatch, tmp_path):
    import importlib.util

    from mpdistill.run.recipe import load_recipe

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)  # by name, from anywhere
    r = load_recipe(shipped.shipped_path(recipe))
    if (r.training.vllm is not None or r.rewrite.backend == "vllm") and importlib.util.find_spec("vllm") is None:
        # Planned where vLLM is not installed: that, and only that, is what the plan refuses.
        output = dry_run(recipe, code=2)
        assert errors(output) and all("needs the vllm package" in line for line in errors(output)), errors(output)
    else:
        output = dry_run(recipe)
        assert not errors(output)
    for field in ("method:", "student:", "teacher:", "data:", "devices:", "batch:", "steps:", "rewrites:", "lora:",
                  "outputs:"):
        assert any(line.startswith(field) for line in output.splitlines()), field


def test_qwen3_recipe_says_what_cannot_be_checked_offline(bf16_gpu, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from mpdistill.run.recipe import load_recipe

    p = dry_run_mod.describe_run(load_recipe(shipped.shipped_path("qwen3-1.7b_from_qwen3-8b")))
    # The two Qwen3 configs ship with the package (assets/configs): parameters and vocabularies are known.
    assert p["student"]["source"] == p["teacher"]["source"] == "Hugging Face Hub (its config shipped with mpdistill)"
    assert p["student"]["parameters"] == 1_720_574_976 and p["vocab_match"] is True
    assert p["data"]["rows"] is None and p["data"]["note"] == "not counted offline"
    assert p["batch"]["effective"] == 16 and p["max_completion_length"] == 4096 and p["devices"]["bf16_requested"]
    assert p["errors"] == []
    other = load_recipe(shipped.shipped_path("qwen3-1.7b_from_qwen3-8b"), {"teacher": "Qwen/Qwen3-32B"})
    q = dry_run_mod.describe_run(other)
    assert q["teacher"]["note"] == dry_run_mod.NOT_OFFLINE and q["memory"] is None


def test_embedded_recipe_counts_rows_and_parameters(tmp_path):
    output = dry_run("embedded", "--out", str(tmp_path / "run"))
    assert "2048 rows" in output and "vocab sizes: match" in output and "335,952 parameters" in output
    # The memory estimate reads the longest of those prompts, as the student's tokenizer counts it.
    from mpdistill.run.recipe import load_recipe
    from mpdistill.models.loading import load_tokenizer

    tok = load_tokenizer("embedded:student")
    rows = training_problems(load_recipe(shipped.shipped_path("embedded")))
    longest = max(len(tok(r["problem"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert f"(prompts: {longest} tokens, the longest training prompt)" in output
    assert f"outputs: {tmp_path / 'run'}/ -> model/" in output


def _qwen3_recipe(tmp_path, student, teacher, **training):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(30)))
    # 24 rows: one optimizer step of 2 x 3 accumulation x 4 processes (fewer could run no step).
    recipe = {"method": "mpd", "task": "math", "student": str(student), "teacher": str(teacher),
              "data": {"train": str(data), "question_field": "question", "prompt_style": "chat", "n_train": 24},
              "training": {"batch_size": 2, "gradient_accumulation_steps": 3, **training}}
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    return path


def test_tiny_qwen3_plan_shows_parameters_and_matching_vocab(tiny_qwen3, tmp_path, no_gpu, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("WORLD_SIZE", "4")
    path = _qwen3_recipe(tmp_path, tiny_qwen3, tiny_qwen3, lora={"r": 8})
    output = dry_run(path)
    expected = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_qwen3).parameters())
    assert f"qwen3, {expected / 1e6:.1f}M parameters (from config), vocab 151936" in output
    assert "vocab sizes: match" in output
    assert "24 rows" in output  # n_train of the 30 in the file
    assert "devices: CPU (no CUDA device visible)" in output
    assert "= 24 prompts per optimizer step" in output  # 2 x 3 x WORLD_SIZE 4
    assert "lora: r 8, alpha 32" in output
    from mpdistill.run.recipe import load_recipe

    p = dry_run_mod.describe_run(load_recipe(path))
    assert p["student"]["parameters"] == expected and p["vocab_match"] is True and p["errors"] == []


def test_missing_local_model_exits_2_with_one_line_naming_the_key(tiny_qwen3, tmp_path, no_gpu):
    path = _qwen3_recipe(tmp_path, tmp_path / "nowhere", tiny_qwen3)
    lines = errors(dry_run(path, code=2))
    nowhere = tmp_path / "nowhere"
    assert lines == [f"error: student: model {str(nowhere)!r}: no such folder {nowhere}"]
    # The run itself refuses it with the same line: one pre-run check, raised by train, printed by the dry run.
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run")], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and errors(result.output) == lines


def test_unreadable_data_file_exits_2_naming_data_train(tiny_qwen3, tmp_path, no_gpu):
    path = _qwen3_recipe(tmp_path, tiny_qwen3, tiny_qwen3)
    (tmp_path / "train.jsonl").write_text("{not json\n")
    lines = errors(dry_run(path, code=2))
    assert len(lines) == 1 and lines[0].startswith("error: data.train: ") and "not valid JSON" in lines[0]


def test_bf16_planned_on_a_machine_without_a_gpu_is_a_warning(tiny_qwen3, tmp_path, no_gpu):
    """A dry run on a login node checks a plan for the GPU nodes: what depends on their devices is a
    warning there, and the plan passes (exit 0); on a GPU without bf16 it is an error."""
    import shutil

    teacher = shutil.copytree(tiny_qwen3, tmp_path / "teacher")  # another folder: no same-model warning
    path = _qwen3_recipe(tmp_path, tiny_qwen3, teacher, bf16=True)
    output = dry_run(path, code=0)
    assert "bf16 NOT usable" in output and errors(output) == []
    assert [line for line in output.splitlines() if line.startswith("warning:")] == [
        "warning: training.bf16: no CUDA device is visible here, so bf16 is not checked; the run needs GPUs that "
        "support it (or training.bf16: false)"]


def test_bf16_on_a_gpu_without_it_exits_2(tiny_qwen3, tmp_path, monkeypatch):
    monkeypatch.setattr(dry_run_mod, "probe_devices", lambda: {"cuda": 1, "names": ["old GPU"], "bf16_supported": False})
    path = _qwen3_recipe(tmp_path, tiny_qwen3, tiny_qwen3, bf16=True)
    assert errors(dry_run(path, code=2)) == [
        "error: training.bf16: bf16 is requested but the visible GPU does not support it; set training.bf16: false "
        "or run on a GPU that does"]


def test_the_qwen3_recipe_dry_runs_with_exit_0_on_a_cpu_machine(no_gpu, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    output = dry_run("qwen3-1.7b_from_qwen3-8b", code=0)
    assert errors(output) == [] and "warning: training.bf16" in output
    # The sampling in use beside Qwen3's card (known offline from the Hub names), for each model's mode.
    assert ("student sampling: temperature 1, top-p 0.95, top-k 20 (the qwen3 card recommends 0.6 / 0.95 / 20 for "
            "thinking mode); the loss reads the logits at that temperature too") in output
    assert "rewrite sampling: temperature 0.7, top-p 0.8, top-k 20 (as the qwen3 card recommends for non-thinking mode)" \
        in output
    # A model of its own says how it is sampled in its generation_config (the embedded ones: 1 / 1 / 0).
    assert "student sampling: temperature 1, top-p 1, top-k 0 (as its generation_config recommends)" in dry_run("embedded")


def test_the_qwen3_recipe_prints_its_memory_offline(no_gpu, monkeypatch):
    """The estimate of mpdistill/run/memory.py (tests/test_memory.py holds its terms to real tensors)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = dry_run("qwen3-1.7b_from_qwen3-8b")
    assert "Qwen/Qwen3-8B [Hugging Face Hub (its config shipped with mpdistill)]" in out
    for line in ("student weights, fp32: 6.9 GB (1.72 B × 4 B)", "AdamW states (m, v): 13.8 GB (1.72 B × 8 B)",
                 "teacher weights, bf16: 16.4 GB (8.19 B × 2 B)",
                 "student KV cache while sampling: 8.0 GB (112 KiB/token × 16 sequences × 4,352 tokens) [phase]",
                 "teacher KV cache while rewriting: 20.4 GB (144 KiB/token × 16 rewrites × 8,648 tokens) [phase]",
                 "peak: 64.3 GB on one device"):
        assert line in out, out


def test_the_sampling_beside_a_local_qwen3_is_what_eval_would_use_in_its_mode(tiny_qwen3, tmp_path, no_gpu):
    """A local Qwen3 folder's generation_config samples as its card says for thinking mode: the student,
    thinking, is compared with it; the teacher, writing with its thinking off, with the card's
    non-thinking values, as `mpdistill eval --no-thinking` would sample it."""
    import shutil

    import yaml

    student, teacher = (shutil.copytree(tiny_qwen3, tmp_path / role) for role in ("student", "teacher"))
    for folder in (student, teacher):
        shutil.copy(Path(__file__).parent / "fixtures" / "qwen3" / "generation_config.json", folder)
    path = _qwen3_recipe(tmp_path, student, teacher)
    recipe = yaml.safe_load(path.read_text())
    recipe["rewrite"] = {"teacher_enable_thinking": False}
    path.write_text(yaml.safe_dump(recipe))
    output = dry_run(path)
    assert ("student sampling: temperature 1, top-p 1, top-k 0 (its generation_config recommends 0.6 / 0.95 / 20); "
            "the loss reads the logits at that temperature too") in output
    assert "rewrite sampling: temperature 0.6, top-p 0.95, top-k 20 (the qwen3 card recommends 0.7 / 0.8 / 20 for " \
        "non-thinking mode)" in output


def test_dry_run_refuses_an_out_folder_that_holds_a_run(tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    lines = errors(dry_run("embedded", "--out", str(tmp_path / "run"), code=2))
    assert len(lines) == 1 and "already holds a run (model)" in lines[0]


def test_dry_run_loads_no_weights(tiny_qwen3, tmp_path, no_gpu, monkeypatch):
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a dry run must not load weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)
    # Tokenizers hold no weights: the dry run reads local ones to check the chat templates.
    dry_run(_qwen3_recipe(tmp_path, tiny_qwen3, tiny_qwen3))


def _without_thinking_switch(tmp_path, model):
    """A copy of a model folder whose chat template has no enable_thinking switch (config and
    tokenizer only: a dry run reads nothing else)."""
    from transformers import AutoTokenizer

    folder = tmp_path / "no-switch"
    folder.mkdir()
    (folder / "config.json").write_bytes((model / "config.json").read_bytes())
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(folder)
    return folder


def test_dry_run_reads_the_local_templates_thinking_switch(tiny_qwen3, tmp_path, no_gpu):
    """The run refuses a thinking switch its template cannot take; the dry run says so first."""
    plain = _without_thinking_switch(tmp_path, tiny_qwen3)
    path = _qwen3_recipe(tmp_path, plain, tiny_qwen3, student_enable_thinking=True)
    assert errors(dry_run(path, code=2)) == [
        "error: training.student_enable_thinking is set but the tokenizer's chat template has no enable_thinking switch"]
    import yaml

    recipe = yaml.safe_load(path.read_text())
    recipe.update(student=str(tiny_qwen3), teacher=str(plain), rewrite={"teacher_enable_thinking": False})
    path.write_text(yaml.safe_dump(recipe))
    assert errors(dry_run(path, code=2)) == [
        "error: rewrite.teacher_enable_thinking is set but the tokenizer's chat template has no enable_thinking switch"]


def test_student_as_its_own_teacher_is_warned(tiny_qwen3, tmp_path, no_gpu, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    same = "student and teacher are the same model"
    assert same in dry_run(_qwen3_recipe(tmp_path, tiny_qwen3, tiny_qwen3))
    # Another path to the same folder is the same model; self-distillation's teacher is the student by design.
    (tmp_path / "link").symlink_to(tiny_qwen3)
    assert same in dry_run(_qwen3_recipe(tmp_path, tiny_qwen3, tmp_path / "link"))
    assert same not in dry_run(tmp_path / "r.yaml", "--set", "method=self_distill")
    assert same not in dry_run("embedded")


def test_served_rewriter_is_shown(tmp_path, no_gpu):
    path = tmp_path / "r.yaml"
    path.write_text("data: {n_train: 4}\ntraining: {batch_size: 4}\nrewrite: {backend: openai, base_url: 'http://h:8000/v1', model: big, "
                    "api_key_env: KEY}\n")
    assert "rewrites: served: big at http://h:8000/v1, API key from $KEY" in dry_run(path)


def test_train_without_out_or_dry_run_exits_2(tmp_path):
    result = runner.invoke(app, ["train", "embedded"])
    assert result.exit_code == 2 and "--out is required" in result.output


def test_lora_on_the_output_head_is_refused():
    from mpdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="training.lora.target_modules: .*lm_head cannot carry an adapter"):
        recipe_from_dict({"training": {"lora": {"target_modules": ["q_proj", "lm_head"]}}})


# --- accelerate launch configs -----------------------------------------------------------------

CONFIGS = [shipped.shipped_path(name) for name in shipped.accelerate_names()]


def test_the_five_launch_configs_are_shipped():
    assert {p.name for p in CONFIGS} == {"single_gpu.yaml", "zero3_8gpu.yaml", "fsdp2_8gpu.yaml", "multinode.yaml",
                                         "cpu_2proc.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_launch_config_loads_and_every_nested_key_is_a_launch_option(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(path))  # unknown top-level keys raise here
    assert isinstance(config, ClusterConfig)
    # `accelerate launch` copies nested keys onto its own options without checking them, so check here.
    options = {a.dest for a in launch_command_parser()._actions}
    for key in config.deepspeed_config or {}:
        assert key in options, key
    for key in config.fsdp_config or {}:
        assert (key if key.startswith("fsdp_") else f"fsdp_{key}") in options, key
    expected = {"single_gpu.yaml": ("NO", 1, 1), "zero3_8gpu.yaml": ("DEEPSPEED", 8, 1),
                "fsdp2_8gpu.yaml": ("FSDP", 8, 1), "multinode.yaml": ("DEEPSPEED", 16, 2),
                # MULTI_GPU: accelerate starts the processes with torchrun; on a CPU each trains there
                # (tests/test_multiprocess.py runs it).
                "cpu_2proc.yaml": ("MULTI_GPU", 2, 1)}[path.name]
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == expected
    assert config.mixed_precision == ("no" if path.name == "cpu_2proc.yaml" else "bf16")
    if path.name == "zero3_8gpu.yaml" or path.name == "multinode.yaml":
        assert config.deepspeed_config["zero_stage"] == 3
    if path.name == "fsdp2_8gpu.yaml":
        assert config.fsdp_config["fsdp_version"] == 2
    if path.name == "multinode.yaml":
        assert config.main_process_ip and config.main_process_port and config.machine_rank == 0
        assert "FILL IN" in path.read_text()


def test_bf16_recipes_load_the_frozen_teacher_in_bf16_and_the_student_in_fp32(tiny_pair, tmp_path, monkeypatch):
    from mpdistill.run import pipeline

    loaded = []

    def record(name, *, dtype=torch.float32, **trust):
        loaded.append((name, dtype, trust))
        if len(loaded) == 2:
            raise RuntimeError("stop before training")
        return load_model(name, dtype=dtype, **trust)

    monkeypatch.setattr(pipeline, "load_model", record)
    recipe = _lora_recipe(tiny_pair, bf16=True)
    with pytest.raises(RuntimeError, match="stop before training"):
        train(recipe, tmp_path / "run")
    safe = {"allow_pickle": False, "trust_remote_code": False}  # the recipe's security defaults reach the loader
    assert loaded == [(recipe.student, torch.float32, safe), (recipe.teacher, torch.bfloat16, safe)]


# --- shipped recipes by name: `mpdistill recipes` ------------------------------------------------


def test_a_recipe_argument_is_a_file_when_it_is_one_else_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped.recipe_file("embedded") == shipped.HERE / "embedded.yaml"
    (tmp_path / "embedded").mkdir()  # a folder (say, an --out) does not hide the shipped recipe
    assert shipped.recipe_file("embedded") == shipped.HERE / "embedded.yaml"
    assert shipped.recipe_file("missing.yaml") == Path("missing.yaml")  # a file name: load_recipe says it is missing
    assert shipped.recipe_file("r.YML") == Path("r.YML")
    (tmp_path / "qwen3-1.7b_from_qwen3-8b").write_text("method: opd\n")
    assert shipped.recipe_file("qwen3-1.7b_from_qwen3-8b") == Path("qwen3-1.7b_from_qwen3-8b")  # an existing file
    with pytest.raises(shipped.RecipeNotFound, match="shipped recipes: embedded, embedded-verbose-teacher, qwen3-1.7b_from_qwen3-8b"):
        shipped.recipe_file("accelerate/single_gpu")  # a launch config is no recipe


@pytest.mark.parametrize("args", [["train", "embeded", "--dry-run"], ["demo", "--quick", "--recipe", "embeded"]])
def test_an_unknown_recipe_name_is_one_error_listing_the_shipped_ones(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args + ["--out", "out"], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert errors(result.output) == [
        "error: 'embeded' is neither a recipe file nor a shipped recipe; shipped recipes: embedded, "
        "embedded-verbose-teacher, qwen3-1.7b_from_qwen3-8b, qwen3-1.7b_from_qwen3-8b_math (`mpdistill recipes` lists "
        "them)"]
    assert not (tmp_path / "out").exists()


def test_recipes_lists_every_shipped_file_with_its_first_comment_line():
    result = runner.invoke(app, ["recipes"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in shipped.names():
        assert any(line.split() and line.split()[0] == name for line in lines), name
    assert "  embedded                       The demo's MPD recipe" in lines
    assert "  accelerate/single_gpu          One GPU" in lines
    assert "  accelerate/multinode           Two machines x 8 GPUs (16 processes), DeepSpeed ZeRO-3" in lines


def test_recipes_path_prints_the_file_for_accelerate_launch():
    result = runner.invoke(app, ["recipes", "path", "accelerate/single_gpu"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert result.output == f"{shipped.HERE / 'accelerate' / 'single_gpu.yaml'}\n"
    result = runner.invoke(app, ["recipes", "path", "single_gpu"], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "error: no shipped recipe or accelerate config is named 'single_gpu'; shipped: " \
        "embedded, embedded-verbose-teacher, qwen3-1.7b_from_qwen3-8b, qwen3-1.7b_from_qwen3-8b_math, " \
        "accelerate/cpu_2proc" in result.output


def test_recipes_copy_writes_an_editable_copy_that_runs_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["recipes", "copy", "embedded"], env={"COLUMNS": "400"})
    assert result.exit_code == 0 and result.output == "wrote embedded.yaml\n", result.output
    assert (tmp_path / "embedded.yaml").read_text() == shipped.shipped_path("embedded").read_text()
    assert "2048 rows" in dry_run("embedded.yaml")  # the copy, not the shipped file: `embedded:` names still resolve
    (tmp_path / "configs").mkdir()
    assert runner.invoke(app, ["recipes", "copy", "accelerate/multinode", "configs"]).exit_code == 0
    assert (tmp_path / "configs" / "multinode.yaml").read_text() == shipped.shipped_path("accelerate/multinode").read_text()
    assert runner.invoke(app, ["recipes", "copy", "embedded", "mine.yaml"]).exit_code == 0
    assert (tmp_path / "mine.yaml").exists()


@pytest.mark.parametrize("dest", [[], ["mine.yaml"], ["."]])
def test_recipes_copy_never_overwrites_a_file(dest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / (dest[0] if dest and dest[0] != "." else "embedded.yaml")
    target.write_text("method: opd  # my edits\n")
    result = runner.invoke(app, ["recipes", "copy", "embedded", *dest], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    shown = "embedded.yaml" if not dest or dest == ["."] else dest[0]
    assert errors(result.output) == [f"error: {shown} already exists; not overwriting it (give another DEST)"]
    assert target.read_text() == "method: opd  # my edits\n"


def test_recipes_copy_of_an_unknown_name_or_into_a_missing_folder_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["recipes", "copy", "embeded"], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "error: no shipped recipe or accelerate config is named 'embeded'" in result.output
    result = runner.invoke(app, ["recipes", "copy", "embedded", "no/such/dir/r.yaml"], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "error: cannot write no/such/dir/r.yaml: No such file or directory" in result.output
    assert list(tmp_path.iterdir()) == []
