"""vLLM: student rollouts through TRL's ``use_vllm``, the in-process vLLM rewriter, and the checks that
refuse a vLLM request this machine cannot serve, before any model loads.

These run in the default environment, without vLLM: TRL's own generation object is replaced by a
stand-in with the same interface, and the device vLLM would report is pretended, so what is tested
is everything on our side of it: the recipe → TRL mapping, MPD's rewrite step on completions that
come back from TRL's vLLM path, and the one-line errors for every device. The same paths against a
real engine and a real server (vLLM's CPU build) are in tests/real_engine/.
"""

import importlib.util
import inspect
import json
import sys
import types

import pytest
import torch
from trl import DistillationConfig
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.errors import ConfigError
from mpdistill.run.recipe import recipe_from_dict
from mpdistill.run.checks import check_generation_backends
from mpdistill.run.pipeline import build_trainer, load_model, training_problems, vllm_rollout_args
from mpdistill.rewriting.rewrite import RewriteOutput, VLLMRewriter
from mpdistill.rollout import GenerationSettings
from mpdistill.rollout import vllm as vllm_backend
from mpdistill.tasks import chain

runner = CliRunner()
STUDENT_TEXT = "so the answer is 3\nA:3"


def _recipe(tiny_pair, **extra):
    data = {
        "method": "mpd",
        "student": str(tiny_pair / "student"),
        "teacher": str(tiny_pair / "teacher"),
        "data": {"n_train": 16},
        "training": {"steps": 2, "batch_size": 4, "max_completion_length": 24, "logging_steps": 1},
        "rewrite": {"prompt_template": chain.REWRITE_TEMPLATE.replace("{prompt}", "{problem}"),
                    "use_chat_template": False, "max_new_tokens": 24},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return recipe_from_dict(data)


def test_recipe_maps_onto_trl_vllm_settings():
    colocate = recipe_from_dict({"training": {"vllm": {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.25,
                                                       "enable_sleep_mode": True}}}).training.vllm
    server = recipe_from_dict({"training": {"vllm": {"mode": "server",
                                                     "server_base_url": "http://10.0.0.5:8000"}}}).training.vllm
    for v, expected in (
        (colocate, {"use_vllm": True, "vllm_mode": "colocate", "vllm_tensor_parallel_size": 2,
                    "vllm_gpu_memory_utilization": 0.25, "vllm_enable_sleep_mode": True}),
        (server, {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://10.0.0.5:8000",
                  "vllm_server_timeout": 240.0}),
    ):
        args = DistillationConfig(output_dir="unused", use_cpu=True, report_to="none", **vllm_rollout_args(v))
        assert {k: getattr(args, k) for k in expected} == expected
    assert vllm_rollout_args(None) == {"use_vllm": False}
    with pytest.raises(ConfigError, match="training.vllm.server_base_url is required"):
        recipe_from_dict({"training": {"vllm": {"mode": "server"}}})
    with pytest.raises(ConfigError, match="two vLLM engines on the training GPUs must leave room for training"):
        recipe_from_dict({"training": {"vllm": {"gpu_memory_utilization": 0.5}},
                          "rewrite": {"backend": "vllm", "gpu_memory_utilization": 0.4}})


def test_trl_vllm_generation_interface_is_the_one_mpd_relies_on():
    """MPD post-processes what TRL's vLLM path returns; fail loudly if that interface moves."""
    from trl.generation.vllm_generation import VLLMGeneration

    assert list(inspect.signature(VLLMGeneration.generate).parameters) == [
        "self", "prompts", "images", "num_generations", "profiler"]
    assert "sync_weights" in vars(VLLMGeneration)
    source = inspect.getsource(
        __import__("trl.trainer.distillation_trainer", fromlist=["x"]).DistillationTrainer._generate_single_turn)
    assert "self.vllm_generation.generate(" in source and "self.vllm_generation.sync_weights()" in source


class StandInVLLMGeneration:
    """TRL's ``VLLMGeneration`` interface: the student "samples" a fixed verbose trace for every prompt."""

    def __init__(self, tokenizer):
        self.completion = tokenizer(STUDENT_TEXT, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.prompts, self.syncs = [], 0

    def sync_weights(self):
        self.syncs += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        assert num_generations == 1 and images is None
        self.prompts.append([list(p) for p in prompts])
        return prompts, [list(self.completion) for _ in prompts], None, None


class ConciseRewriter:
    def rewrite(self, prompts, max_new_tokens=None):
        return [RewriteOutput("A:3") for _ in prompts]


def test_mpd_rewrites_completions_from_trls_vllm_path(tiny_pair, tmp_path):
    recipe = _recipe(tiny_pair)
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    # What TRL sets up for use_vllm, with the engine replaced (it needs a GPU).
    trainer.use_vllm, trainer.vllm_mode, trainer._last_loaded_step = True, "colocate", -1
    trainer.vllm_generation = engine = StandInVLLMGeneration(tok)
    trainer.rewriter = ConciseRewriter()
    trained = []
    original = trainer._compute_loss

    def record(model, inputs, num_items_in_batch):
        trained.append(inputs["completion_ids"].tolist())
        return original(model, inputs, num_items_in_batch)

    trainer._compute_loss = record
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()

    assert engine.syncs == 2 and len(engine.prompts) == 2  # new weights pushed before each step's rollouts
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["student"] == STUDENT_TEXT and r["trained_on"] == "rewrite" for r in rows)
    rewrite_ids = tok("A:3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for batch in trained:  # the loss ran on the rewrites, not on what vLLM sampled
        assert all(row[: len(rewrite_ids)] == rewrite_ids for row in batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_vllm_rewriter_sends_each_prompt_with_its_budget_and_seed(tiny_qwen3):
    from mpdistill.models.loading import load_tokenizer
    from mpdistill.rollout.hf import Generation

    tok = load_tokenizer(str(tiny_qwen3))
    calls = []

    class Engine:
        def generate(self, prompts, settings, seeds, max_new_tokens=None):
            calls.append((prompts, seeds, max_new_tokens))
            return [Generation(text=f" short {i} ", token_ids=[1], truncated=i == 1) for i in range(len(prompts))]

    settings = GenerationSettings(max_new_tokens=64, temperature=0.6, top_p=0.95, top_k=20)
    rewriter = VLLMRewriter(Engine(), tok, settings, chat_template_kwargs={"enable_thinking": False}, seed=3)
    out = rewriter.rewrite(["rewrite A", "rewrite B"], max_new_tokens=[10, 20])
    assert [(o.text, o.truncated) for o in out] == [("short 0", False), ("short 1", True)]
    (prompts, seeds, budgets), = calls
    assert budgets == [10, 20] and len(set(seeds)) == 2
    expected = tok.apply_chat_template([{"role": "user", "content": "rewrite A"}], add_generation_prompt=True,
                                       tokenize=True, enable_thinking=False)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert prompts[0] == list(expected)
    again = VLLMRewriter(Engine(), tok, settings, seed=3)
    again.rewrite(["rewrite A", "rewrite B"], max_new_tokens=[10, 20])
    assert calls[1][1] == seeds  # same seed, same per-rewrite seeds


def test_vllm_generator_passes_per_prompt_budgets(monkeypatch):
    made = {}

    class LLM:
        def __init__(self, **kwargs):
            made.update(kwargs)

        def get_tokenizer(self):
            return types.SimpleNamespace(all_special_ids=[0])

        def generate(self, prompts, params, use_tqdm=False):
            made["params"] = params
            done = types.SimpleNamespace(token_ids=[5, 0], text="x", finish_reason="stop")
            return [types.SimpleNamespace(outputs=[done]) for _ in prompts]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    monkeypatch.setattr(vllm_backend, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_backend, "engine_device", lambda: "cuda")
    gen = vllm_backend.VLLMGenerator("m", seed=1, gpu_memory_utilization=0.3)
    out = gen.generate([[1], [2]], GenerationSettings(max_new_tokens=50), seeds=[7, 8], max_new_tokens=[0, 30])
    assert [p.max_tokens for p in made["params"]] == [1, 30] and [p.seed for p in made["params"]] == [7, 8]
    assert made["gpu_memory_utilization"] == 0.3 and [o.token_ids for o in out] == [[], [5]]
    assert [o.truncated for o in out] == [True, False]  # a budget of 0: nothing, cut short, as on transformers
    with pytest.raises(ValueError, match="2 prompts, 1 seeds"):
        gen.generate([[1], [2]], GenerationSettings(), seeds=[7])


# -- checks before anything loads -------------------------------------------------------------------


@pytest.fixture
def pretend(monkeypatch):
    """Pretend vLLM is (or is not) installed, on a device ("cuda", "cpu" or "" for none), with a
    number of GPUs visible. The real engine's checks run in tests/real_engine/ against vLLM's CPU build."""

    def set_(vllm_installed: bool, gpus: int = 0, device: str | None = None):
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: (object() if vllm_installed else None) if name == "vllm" else real(name, *a))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(vllm_backend, "engine_device", lambda: device if device is not None else "cuda" if gpus else "")
        monkeypatch.setattr(vllm_backend, "cpu_head_sizes", lambda: [32, 64, 128])

    return set_


def _train_cli(tmp_path, recipe_text, student=None):
    path = tmp_path / "r.yaml"
    # The student does not exist: a check that ran after loading would never be reached. Every pre-run
    # problem is said, one line each, generation's before the model folders'.
    path.write_text(f"student: {student or tmp_path / 'no-such-student'}\n{recipe_text}")
    return runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])


def _errors(output: str) -> list[str]:
    return [" ".join(line.split()) for line in " ".join(output.split("\n")).split("error: ")[1:]]


@pytest.mark.parametrize("recipe_text, installed, gpus, device, message", [
    ("training: {vllm: {mode: colocate}}", False, 0, None,
     "needs the vllm package (GPU machines: pip install 'mpdistill[vllm]'; CPU only: vLLM's CPU build, see "
     "docs/VLLM.md); remove training.vllm to sample the student with transformers"),
    ("training: {vllm: {mode: colocate}}", True, 0, "",
     "training.vllm: vLLM finds no device to run on here (no CUDA GPU is visible, and this is not vLLM's CPU build"),
    ("training: {vllm: {mode: colocate}}", True, 0, "cuda",
     "training.vllm: vLLM's GPU build needs a CUDA GPU and none is visible here"),
    ("training: {vllm: {tensor_parallel_size: 4}}", True, 2, None,
     "training.vllm.tensor_parallel_size is 4 but only 2 GPU(s) are visible; lower it to at most 2"),
    ("training: {vllm: {tensor_parallel_size: 2}}", True, 0, "cpu",
     "training.vllm.tensor_parallel_size is 2, but on vLLM's CPU build each engine runs in one process here"),
    ("training: {vllm: {mode: server, server_base_url: 'http://127.0.0.1:9'}}", True, 0, "cpu",
     "training.vllm.mode server: TRL sends the student's new weights to the vLLM server over NCCL, which needs a "
     "CUDA GPU in the training process"),
    ("rewrite: {backend: vllm, tensor_parallel_size: 8}", True, 1, None,
     "rewrite.tensor_parallel_size is 8 but only 1 GPU(s) are visible"),
    ("rewrite: {backend: vllm}", False, 0, None, "see docs/VLLM.md); set rewrite.backend: transformers"),
])
def test_a_vllm_request_this_machine_cannot_serve_is_one_line_before_loading(tmp_path, pretend, recipe_text,
                                                                            installed, gpus, device, message):
    pretend(installed, gpus, device)
    result = _train_cli(tmp_path, recipe_text)
    assert result.exit_code == 2
    errors = _errors(result.output)
    assert len(errors) == 2 and message in errors[0] and "no-such-student': no such folder" in errors[1], result.output
    assert not (tmp_path / "run").exists()


def test_on_vllms_cpu_build_an_unsupported_head_size_is_one_line_before_loading(tmp_path, pretend, tiny_pair):
    """The tiny student's heads are 16 wide: vLLM's CPU attention has no kernel for that size."""
    pretend(True, 0, "cpu")
    result = _train_cli(tmp_path, "training: {vllm: {mode: colocate}}", student=tiny_pair / "student")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert (f"training.vllm: the student '{tiny_pair / 'student'}' has attention heads of size 16, which vLLM's CPU "
            "attention does not support (it supports 32, 64, 128)") in text
    assert not (tmp_path / "run").exists()


def test_an_unreachable_rollout_server_is_one_line_before_loading(tmp_path, pretend):
    import socket

    pretend(True, 1)  # server mode needs a CUDA GPU in the trainer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _train_cli(tmp_path, f"training: {{vllm: {{mode: server, server_base_url: 'http://127.0.0.1:{port}',"
                                  " server_timeout_s: 2}}\n")
    errors = _errors(result.output)
    assert result.exit_code == 2 and len(errors) == 2 and "no such folder" in errors[1]
    assert "cannot reach the vLLM server" in errors[0] and "trl vllm-serve --model STUDENT" in errors[0]


def test_dry_run_shows_where_rollouts_run_and_what_is_missing(tmp_path, pretend):
    pretend(False, 0)
    path = tmp_path / "r.yaml"
    path.write_text("data: {n_train: 4}\ntraining: {batch_size: 4, vllm: {mode: server, server_base_url: 'http://h:8000'}}\n"
                    "rewrite: {backend: vllm, model: big-teacher}\n")
    result = runner.invoke(app, ["train", str(path), "--dry-run"])
    text = " ".join(result.output.split())
    assert "student rollouts: vLLM server at http://h:8000 (TRL use_vllm, server mode)" in text
    assert "rewrites: in-process vLLM engine: big-teacher (tensor parallel 1, 0.3 of GPU memory)" in text
    # Every problem, one line each. Server mode needs a GPU in the trainer: on this GPU-less machine a
    # plan for GPU nodes gets a warning. The rewriter's engine needs vLLM installed: an error anywhere.
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert "warning: training.vllm.mode server: TRL sends the student's new weights" in text
    assert "error: the vllm backend needs the vllm package" in text and "set rewrite.backend: transformers" in text


def test_checks_pass_when_nothing_needs_vllm(tiny_pair):
    check_generation_backends(_recipe(tiny_pair))


def test_a_rollout_server_that_answers_its_health_check_passes():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Health(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.path)
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        vllm_backend.check_server("training.vllm.server_base_url", url + "/", timeout_s=5)
        assert seen == ["/health"]
        with pytest.raises(vllm_backend.BackendUnavailable, match="gave HTTP 404; is it a `trl vllm-serve` server"):
            vllm_backend.check_server("training.vllm.server_base_url", url + "/v1", timeout_s=5)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
