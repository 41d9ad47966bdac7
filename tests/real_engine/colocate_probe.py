"""MPD with student rollouts from TRL's colocated vLLM engine (``training.vllm.mode: colocate``), on
vLLM's CPU build. Run as a script by test_real_vllm.py; writes what it saw as JSON to argv[1].

Before every rollout it reads one weight matrix from inside the engine and compares it with the
trainer's student at that moment and at the step before: rollouts must come from the weights the
student has now, not from the ones it started with.
"""

import json
import sys
from pathlib import Path


def main(out: Path, student_dir: Path) -> None:
    import torch

    from mpdistill.config import recipe_from_dict
    from mpdistill.pipeline import build_trainer, check_generation_backends, load_model, training_problems

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
    name = "model.layers.0.mlp.down_proj.weight"

    def engine_weight():
        (w,) = engine.llm.apply_model(lambda m: m.model.layers[0].mlp.down_proj.weight.detach().float().clone())
        return w

    def trainer_weight():
        return dict(trainer.model.named_parameters())[name].detach().float().clone()

    seen, last = [], {"weight": trainer_weight()}
    original = engine.generate

    def generate(*args, **kwargs):
        result = original(*args, **kwargs)  # TRL pushes the student's weights first, then samples
        now, inside, before = trainer_weight(), engine_weight(), last["weight"]
        seen.append({
            "step": trainer.state.global_step,
            "engine_vs_student_now": (inside - now).abs().max().item(),
            "engine_vs_student_before": (inside - before).abs().max().item(),
            "student_moved": (now - before).abs().max().item(),
            "completions": len(result[1]),
        })
        last["weight"] = now
        return result

    engine.generate = generate
    trainer.train()
    rows = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    out.write_text(json.dumps({"probes": seen, "rollouts": len(rows), "steps": trainer.state.global_step,
                               "engine_dtype": str(engine.llm.llm_engine.model_config.dtype),
                               "torch": torch.__version__}))


if __name__ == "__main__":  # vLLM starts processes of its own: the entry point must be guarded
    main(Path(sys.argv[1]), Path(sys.argv[2]))
