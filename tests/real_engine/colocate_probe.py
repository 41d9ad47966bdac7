"""MPD with student rollouts from TRL's colocated vLLM engine (``training.vllm.mode: colocate``), on
vLLM's CPU build. Run as a script by test_real_vllm.py; writes what it saw as JSON to argv[1].

After every rollout it scores one fixed token sequence in the engine (its prompt log-probabilities)
and compares them with the trainer's student at that moment and at the step before: rollouts must
come from the weights the student has now, not from the ones it started with. (The engine is asked,
not read: vLLM's CPU build repacks its linear weights for its kernels and keeps no plain copy.)
"""

import json
import sys
from pathlib import Path


def main(out: Path, student_dir: Path) -> None:
    import torch

    from mpdistill.run.recipe import recipe_from_dict
    from mpdistill.run.checks import check_generation_backends
    from mpdistill.run.pipeline import build_trainer, load_model, training_problems

    recipe = recipe_from_dict({
        "method": "mpd", "task": "chain", "student": str(student_dir), "teacher": "embedded:teacher",
        "data": {"n_train": 64},
        "training": {"steps": 3, "batch_size": 4, "learning_rate": 1e-2, "max_completion_length": 32,
                     "logging_steps": 1, "vllm": {"mode": "colocate", "gpu_memory_utilization": 0.3}},
        "rewrite": {"prompt_template": "{problem}rewrite:\n{trace}\nshort:\n", "use_chat_template": False,
                    "max_new_tokens": 32, "top_p": 1.0, "top_k": 0},
    })
    check_generation_backends(recipe)  # the pre-load checks pass on vLLM's CPU build for this student
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    run_dir = out.parent / "run"
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), run_dir)
    engine = trainer.vllm_generation
    from vllm import SamplingParams

    ids = tok("What is 12 + 30? 12 + 30 = 42. What is 5*6+4? 5*6 = 30, 30 + 4 = 34.")["input_ids"]

    def engine_logprobs():
        (result,) = engine.llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                                        use_tqdm=False)
        return torch.tensor([lp[t].logprob for lp, t in zip(result.prompt_logprobs[1:], ids[1:])])

    def student_logprobs():
        with torch.no_grad():
            logits = trainer.model(torch.tensor([ids])).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]

    seen, last = [], {"logprobs": student_logprobs()}
    original = engine.generate

    def generate(*args, **kwargs):
        result = original(*args, **kwargs)  # TRL pushes the student's weights first, then samples
        now, inside, before = student_logprobs(), engine_logprobs(), last["logprobs"]
        seen.append({
            "step": trainer.state.global_step,
            "engine_vs_student_now": (inside - now).abs().max().item(),
            "engine_vs_student_before": (inside - before).abs().max().item(),
            "student_moved": (now - before).abs().max().item(),
            "completions": len(result[1]),
        })
        last["logprobs"] = now
        return result

    engine.generate = generate
    trainer.train()
    rows = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    out.write_text(json.dumps({"probes": seen, "rollouts": len(rows), "steps": trainer.state.global_step,
                               "engine_dtype": str(engine.llm.llm_engine.model_config.dtype),
                               "torch": torch.__version__}))


if __name__ == "__main__":  # vLLM starts processes of its own: the entry point must be guarded
    main(Path(sys.argv[1]), Path(sys.argv[2]))
