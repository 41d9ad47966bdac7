"""MPD overrides private TRL API; these tests fail loudly when TRL moves it."""

import inspect

import trl
from trl import DistillationTrainer


def test_trl_version_is_the_pinned_one():
    assert trl.__version__ == "1.16.0", "MPDTrainer was written against TRL 1.16.0; re-check the hooks below"


def test_generate_hook_signature():
    params = list(inspect.signature(DistillationTrainer._generate).parameters)
    assert params == ["self", "prompts"]
    src = inspect.getsource(DistillationTrainer._generate)
    # The 5-tuple MPDTrainer unpacks and returns.
    assert "return prompt_ids, completion_ids, tool_mask, images, tool_images" in src


def test_tool_mask_is_multiplied_into_the_loss_mask():
    # A dropped sample is a zero tool_mask: it must reach both the loss and its normaliser.
    score = inspect.getsource(DistillationTrainer._generate_and_score_completions)
    assert "prompt_ids_list, completion_ids_list, tool_mask_list, images, tool_images = self._generate(prompts)" in score
    assert "loss_mask = completion_mask if tool_mask is None else completion_mask * tool_mask" in score
    loss = inspect.getsource(DistillationTrainer._compute_loss)
    assert 'loss_mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]' in loss


def test_hooks_used_by_baselines_exist():
    for name in ("_tokenize_prompts", "_get_last_hidden_state", "_compute_loss", "_generate_and_score_completions"):
        assert callable(getattr(DistillationTrainer, name)), name
    params = list(inspect.signature(DistillationTrainer._compute_loss).parameters)
    assert params == ["self", "unwrapped_student", "inputs", "num_items_in_batch"]


def test_hooks_timed_by_bench_exist():
    # `mpdistill bench` times phases by wrapping these on the trainer instance (and the instance
    # attribute `_forward_redirection`, through which the teacher scores the loss).
    for name in ("_generate_single_turn", "_prepare_inputs", "training_step",
                 "create_optimizer_and_scheduler", "get_train_dataloader"):
        assert hasattr(DistillationTrainer, name), name
    generate = inspect.getsource(DistillationTrainer._generate)
    assert "completion_ids = self._generate_single_turn(prompt_ids, images, multimodal_fields)" in generate
    loss = inspect.getsource(DistillationTrainer._compute_loss)
    assert "self._forward_redirection(\n                self.teacher_model," in loss
