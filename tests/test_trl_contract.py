"""MPD overrides private TRL API; these tests fail loudly when TRL moves it."""

import inspect

import trl
from trl import DistillationTrainer


def test_trl_version_is_in_the_declared_range():
    assert trl.__version__.startswith("1.16."), "MPDTrainer was written against TRL 1.16; re-check the hooks below"


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


def test_transformers_hooks_the_checkpoints_override():
    """checkpoints.ResumableTraining overrides private transformers.Trainer methods: write a checkpoint
    aside and rename it (it points ``args.output_dir`` at a staging folder while the parent writes),
    restore MPD's random streams after the trainer's own, and wrap TRL's sampler."""
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    save = inspect.getsource(Trainer._save_checkpoint)
    assert "run_dir = self._get_output_dir(trial=trial)" in save and "self._save_rng_state(output_dir)" in save
    assert "run_dir = self.args.output_dir" in inspect.getsource(Trainer._get_output_dir)
    assert list(inspect.signature(Trainer._load_rng_state).parameters) == ["self", "checkpoint"]
    # A run whose last checkpoint holds every step is loaded, not trained (pipeline.train).
    assert list(inspect.signature(Trainer._load_from_checkpoint).parameters) == ["self", "resume_from_checkpoint",
                                                                                 "model"]
    # Tied weights a checkpoint holds once are taken out of load_result.missing_keys (a NamedTuple).
    assert list(inspect.signature(Trainer._issue_warnings_after_load).parameters) == ["self", "load_result"]
    assert "load_result.missing_keys" in inspect.getsource(Trainer._issue_warnings_after_load)
    assert {"output_dir", "save_total_limit", "use_mtime"} <= set(inspect.signature(rotate_checkpoints).parameters)
    assert PREFIX_CHECKPOINT_DIR == "checkpoint"
    # EpochOrderSampler reseeds TRL's RepeatSampler before each epoch through these attributes.
    assert list(inspect.signature(DistillationTrainer._get_train_sampler).parameters) == ["self", "dataset"]
    from trl.trainer.utils import RepeatSampler

    sampler = RepeatSampler(list(range(8)), mini_repeat_count=1, batch_size=2, shuffle=True, seed=3)
    assert {"generator", "shuffle", "seed", "num_samples"} <= set(vars(sampler))


def test_what_the_overlapped_step_relies_on():
    """rewrite.overlap (mpdistill/trainers/overlap.py) replaces TRL's _prepare_inputs in training: it draws what
    TRL's shuffle draws, divides by num_items_in_batch as TRL's loss does, and counts micro-batches
    with TRL's _step."""
    import torch
    from trl.trainer.utils import shuffle_sequence_dict

    prepare = inspect.getsource(DistillationTrainer._prepare_inputs)
    assert "generation_batch = shuffle_sequence_dict(generation_batch)" in prepare
    assert "self._step % generate_every == 0" in prepare
    # The shuffle's only draw from torch's generator is one randperm over the batch.
    torch.manual_seed(3)
    shuffle_sequence_dict({"x": torch.arange(12), "y": list(range(12)), "n": torch.tensor(5)})
    after_shuffle = torch.rand(4)
    torch.manual_seed(3)
    torch.randperm(12)
    assert torch.equal(torch.rand(4), after_shuffle)
    score = inspect.getsource(DistillationTrainer._generate_and_score_completions)
    assert "num_items_in_batch = self.accelerator.gather(loss_mask.sum()).sum()" in score
    compute = inspect.getsource(DistillationTrainer.compute_loss)
    assert 'num_items_in_batch = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes' in compute
    step = inspect.getsource(DistillationTrainer.training_step)
    assert "self._step += 1" in step


def test_what_self_distillation_relies_on():
    # SelfDistillTrainer gives the teacher its instructed prompt inside _get_last_hidden_state: the
    # loss must call it for the teacher with the concatenated ids, keeping only the completion's
    # positions (so a longer teacher prompt in front of the same completion lines up).
    params = list(inspect.signature(DistillationTrainer._get_last_hidden_state).parameters)
    assert params[:5] == ["self", "unwrapped_model", "input_ids", "attention_mask", "logits_to_keep"]
    loss = inspect.getsource(DistillationTrainer._compute_loss)
    assert 'logits_to_keep = inputs["completion_ids"].size(1)' in loss
    assert "self._get_last_hidden_state,\n                unwrapped_teacher,\n                input_ids," in loss
    # split_tensor_dict carries every tensor of the batch, the teacher's prompt ids included.
    prepare = inspect.getsource(DistillationTrainer._prepare_inputs)
    assert "split_tensor_dict(generation_batch, self.args.gradient_accumulation_steps)" in prepare


def test_what_the_refreshed_self_distillation_and_the_concise_teacher_rely_on():
    # MPD with rewrite.teacher_context: concise swaps the teacher's prompts through the same hook as
    # self-distillation (above). The refreshed teacher is copied by TRL's SyncRefModelCallback (it
    # gathers ZeRO-3 shards): a static method from (model, target model, rate).
    from trl.trainer.callbacks import SyncRefModelCallback

    assert list(inspect.signature(SyncRefModelCallback.sync_target_model).parameters) == ["model", "target_model",
                                                                                         "alpha"]
    assert "mul_(1.0 - alpha).add_(copy_param.data, alpha=alpha)" in inspect.getsource(
        SyncRefModelCallback._sync_target_model)
    # The teacher's prompt ids reach the loss because TRL shuffles every tensor of the generated batch alike.
    assert "shuffle_sequence_dict(generation_batch)" in inspect.getsource(DistillationTrainer._prepare_inputs)


def test_what_the_colocated_engine_refresh_on_vllms_cpu_build_relies_on():
    # rollout/vllm.refresh_colocated_engine_in_place replaces a colocated engine's sync_weights with
    # vLLM's in-place reload fed by TRL's parameter iterator (which gathers shards and merges PEFT
    # adapters), and resets the prefix cache as TRL does. The vLLM side is exercised by the vllm tier.
    from trl.generation.vllm_generation import VLLMGeneration

    assert list(inspect.signature(VLLMGeneration._iter_named_params).parameters) == ["self"]
    sync = inspect.getsource(VLLMGeneration.sync_weights)
    assert 'elif self.mode == "colocate":' in sync and "self._iter_named_params()" in sync
    assert "self.llm.reset_prefix_cache()" in sync
    assert "self.vllm_generation.sync_weights()" in inspect.getsource(DistillationTrainer._generate_single_turn)


def test_what_the_length_penalty_baseline_relies_on():
    from trl import GRPOTrainer

    # Reward functions get the dataset's other columns (the gold "answer") as keyword lists, and are
    # logged under their __name__.
    rewards = inspect.getsource(GRPOTrainer._calculate_rewards)
    assert 'keys = [key for key in inputs[0] if key not in ["prompt", "completion", "completion_ids"]]' in rewards
    assert "reward_func(" in rewards and "completion_ids=completion_ids_list" in rewards
    assert "get_callable_name(reward_funcs[i])" in inspect.getsource(GRPOTrainer.__init__)
    assert list(inspect.signature(GRPOTrainer._tokenize_prompts).parameters) == ["self", "prompts"]
    # ResumableTraining wraps the sampler GRPO builds (the data order a resumed run reproduces).
    assert list(inspect.signature(GRPOTrainer._get_train_sampler).parameters)[:2] == ["self", "dataset"]
