"""Command line: ``mpdistill demo | study | train | eval | compare | view | bench | rewrite | recipes | bootstrap``."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from mpdistill.utils.console import stdout as console

# Plain click help: rich's help cuts long option names at the terminal's width (80 when piped);
# a traceback is only ever a bug, shown as Python writes it.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  context_settings={"max_content_width": 120},
                  help="Mixed-Policy Distillation for reasoning compression.")


def _print_version(value: bool) -> None:
    if value:
        from mpdistill.models.card import framework_versions

        (_, version), *libraries = framework_versions()
        print(f"mpdistill {version} ({', '.join(f'{name} {v}' for name, v in libraries)})")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version of mpdistill and of the libraries it runs on.")) -> None:
    """Mixed-Policy Distillation for reasoning compression."""


# Both run code from the checkpoint when a model loads: off unless asked for (see models.load_model).
ALLOW_PICKLE = typer.Option(False, "--allow-pickle-checkpoints",
                            help="Also load .bin/.pt weights (pickle can run code); default safetensors only.")
TRUST_REMOTE_CODE = typer.Option(False, "--trust-remote-code", help="Run Python code shipped with the model; read it first.")


WORLD = typer.Option("concise-teacher", "--world", help="The embedded world: concise-teacher (the teacher natively "
                     "3x shorter than the student) or verbose-teacher (about as long, more accurate; docs/EMBEDDED.md).")


def _world(name: str) -> str:
    from mpdistill.models.worlds import WORLDS

    if name not in WORLDS:
        _fail(f"--world must be one of {', '.join(WORLDS)}; got {name!r}")
    return name


def _fail(message: str, *, shared: bool = False) -> None:
    """One ``error:`` line, exit code 2. Under a launcher, an error every process shares (the main
    process decided it, see mpdistill/utils/processes.py) is said once, by the main process; one raised
    on another process alone is said by that process, naming it."""
    from mpdistill.utils.console import error

    if os.environ.get("RANK", "0") == "0" or not shared:
        error(message)
    raise typer.Exit(code=2)


@app.command()
def demo(
    out: Path = typer.Option(Path("mpd-demo"), "--out", help="Output folder (re-running with it resumes)."),
    quick: bool = typer.Option(False, "--quick", help="A small version of the demo (for tests)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe file, or a shipped recipe's name (default: "
                                         "the world's: embedded or embedded-verbose-teacher; `mpdistill recipes` "
                                         "lists them)."),
    rewrite_backend: Optional[str] = typer.Option(
        None, "--rewrite-backend", help="Where the teacher writes its rewrites: transformers (the recipe's default) or "
        "vllm (an in-process vLLM engine; its CPU build works on a laptop, see docs/VLLM.md)."),
    world: str = WORLD,
) -> None:
    """Train MPD and the three distillation baselines on an embedded world and compare them on held-out problems."""
    from mpdistill.errors import ConfigError
    from mpdistill.experiments.demo import run_demo
    from mpdistill.recipes import RecipeNotFound
    from mpdistill.tasks.problems import DataError

    try:
        if rewrite_backend not in (None, "transformers", "vllm"):
            raise ConfigError(f"--rewrite-backend must be transformers or vllm, got {rewrite_backend!r}")
        run_demo(out, quick=quick, seed=seed, recipe_path=recipe, rewrite_backend=rewrite_backend,
                 world=_world(world), console=console)
    except (ConfigError, DataError, RecipeNotFound) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted(f"finished trainings and evaluations are kept in {out}; run the same command again to go on "
                     "from there")
    except Exception as err:  # noqa: BLE001 - only a refused write is said here
        _storage_failed(err, f"Finished trainings and evaluations are kept in {out}; once it can be written again, run "
                        "the same command again to go on from there")


@app.command()
def study(
    out: Path = typer.Option(Path("mpd-study"), "--out", help="Output folder (re-running with it resumes)."),
    quick: bool = typer.Option(False, "--quick", help="A small version of the study (for tests)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Training seeds, comma-separated (0 must be one: tuning uses it)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="mpd and the arms to compare it with (baselines "
                                          "and controls, docs/RESULTS.md), comma-separated (default: every one)."),
    world: str = WORLD,
) -> None:
    """MPD, its controls and every baseline on an embedded world: tuned on validation, several seeds, three decodings, costs."""
    from mpdistill.errors import ConfigError
    from mpdistill.experiments.study import ARM_NAMES, run_study
    from mpdistill.tasks.problems import DataError

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
        if 0 not in seed_list:
            raise ConfigError(f"--seeds must include 0 (each method is tuned with seed 0); got {seeds!r}")
        chosen = tuple(m.strip() for m in methods.split(",")) if methods else ARM_NAMES
        run_study(out, quick=quick, seeds=seed_list, arms=chosen, world=_world(world), console=console)
    except (ConfigError, DataError) as err:
        _fail(str(err))
    except ValueError as err:
        _fail(f"--seeds/--methods: {err}")
    except KeyboardInterrupt:
        _interrupted(f"finished trainings and evaluations are kept in {out}; run the same command again to go on "
                     "from there")
    except Exception as err:  # noqa: BLE001 - only a refused write is said here
        _storage_failed(err, f"Finished trainings and evaluations are kept in {out}; once it can be written again, run "
                        "the same command again to go on from there")


@app.command("train")
def train_cmd(
    config: Optional[str] = typer.Argument(None, help="Recipe file, or a shipped recipe's name (`mpdistill recipes` "
                                           "lists them); with --resume, defaults to the run's own."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Run folder: model/, rollouts.jsonl, train_log.jsonl, recipe.yaml (required unless --dry-run)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the recipe and print the resolved plan (models, data, devices, batch) without loading weights."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in --out from its newest checkpoint (training.save_steps)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="Override one recipe key for this run, e.g. --set training.learning_rate=1e-4 "
        "(repeatable; the value is read as YAML). Any TrainingArguments field can be set under training. The run's "
        "recipe.yaml records the result."),
) -> None:
    """Train one method from a recipe."""
    from mpdistill.trainers.checkpoints import ResumeError
    from mpdistill.errors import ConfigError
    from mpdistill.run.recipe import load_recipe, parse_overrides
    from mpdistill.errors import HubError
    from mpdistill.trainers.mix_monitor import MixFloorHalt
    from mpdistill.trainers.nonfinite import NonFiniteHalt
    from mpdistill.tasks.problems import DataError

    if config is None:
        if not (resume and out is not None):
            _fail("give a recipe (or --resume --out RUN to continue a run with its own recipe)")
        config = out / "recipe.yaml"
        if not config.exists():
            _fail(f"{out} has no recipe.yaml: it is not a run folder")
    else:
        from mpdistill.recipes import RecipeNotFound, recipe_file

        try:
            config = recipe_file(config)
        except RecipeNotFound as err:
            _fail(str(err))
    if dry_run:
        from mpdistill.utils.console import error, warn
        from mpdistill.run.dry_run import describe_run, format_run_description

        try:
            p = describe_run(load_recipe(config, parse_overrides(overrides)), out)
        except (ConfigError, DataError) as err:
            _fail(str(err))
        console.print(format_run_description(p))
        for line in p["warnings"]:
            warn(line)
        for line in p["errors"]:
            error(line)
        if p["errors"]:
            raise typer.Exit(code=2)
        return
    if out is None:
        _fail("--out is required (or use --dry-run to only check the recipe)")
    from mpdistill.run.pipeline import train

    own = out is not None and config == out / "recipe.yaml"
    try:
        # A run's own recipe: older runs wrote relative paths as given, from where they were started.
        recipe = load_recipe(config, parse_overrides(overrides), paths_from=Path.cwd() if own else None)
        model_dir = train(recipe, out, resume=resume)
    except (ConfigError, DataError, ResumeError, NonFiniteHalt, MixFloorHalt, HubError) as err:
        # Halts and failed checks of the folder or data are decided alike on every process.
        _fail(str(err), shared=getattr(err, "shared_by_main_process", False)
              or isinstance(err, (NonFiniteHalt, MixFloorHalt)))
    except KeyboardInterrupt:
        _interrupted(_train_saved(out))
    except Exception as err:  # noqa: BLE001 - only a refused write is said here; anything else is a bug, shown as such
        _storage_failed(err, _train_saved(out).replace("The run can continue",
                                                       "Once it can be written again, the run can continue"))
    from mpdistill.utils.processes import is_main_process

    if is_main_process():  # under a launcher, one line for the run, not one per process
        console.print(f"saved {recipe.method} student to {model_dir}")


def _interrupted(saved: str) -> None:
    """Ctrl-C: what is on disk and how to go on, then exit 130 (the shell's code for SIGINT)."""
    from mpdistill.utils.console import warn

    if os.environ.get("RANK", "0") == "0":
        warn(f"interrupted. {saved}")
    raise typer.Exit(code=130)


def _storage_failed(err: BaseException, kept: str) -> None:
    """A write the storage refused (full disk, quota, read-only): one ``error:`` line saying what is kept
    and how to go on. Any other exception is re-raised as it is."""
    from mpdistill.errors import storage_failure

    said = storage_failure(err)
    if said is None:
        raise err
    _fail(f"{said}. {kept}")


def _train_saved(out: Path) -> str:
    from mpdistill.trainers.checkpoints import ROLLOUTS, latest_complete_checkpoint

    if not (out / "recipe.yaml").exists():
        return f"Training had not started; nothing was written to {out}"
    checkpoint = latest_complete_checkpoint(out / "trainer")[0]
    logged = f"; the rollouts so far are in {out / ROLLOUTS}" if (out / ROLLOUTS).exists() else ""
    start = "from step 0 (no checkpoint was saved yet: training.save_steps sets how often)" if checkpoint is None \
        else f"from its newest checkpoint, {checkpoint}"
    return f"The run can continue {start}{logged}: mpdistill train --resume --out {out}"


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(..., "--model", help="Checkpoint folder, Hub name, embedded:student|teacher, or 'gold' "
                              "(grade each benchmark's reference solutions: a check of the grader)."),
    benchmarks: Optional[str] = typer.Option(
        None, "--benchmarks", help="Comma-separated shipped names (gsm8k, math500, aime24, aime25, amc23; chain: the "
        "demo's held-out problems), .jsonl/.parquet files or Hugging Face dataset names. Default: the task's "
        "(math: the five math sets; chain: chain)."),
    task: Optional[str] = typer.Option(
        None, "--task", help="How answers are read and compared, and the prompt a question becomes: math (\\boxed{}) "
        "or chain (A:<digit>). Default: the model's, as its training recorded it (embedded models: chain), else math."),
    out: Path = typer.Option(..., "--out", help="Output folder; re-running with it resumes."),
    n_samples: Optional[int] = typer.Option(None, "--n-samples", help="Samples per problem (avg@k accuracy, pass@k); "
                                            "default 8 for a set of fewer than 100 problems (AIME, AMC), else 1."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Response budget, thinking included; "
                                                 "default by model family (Qwen3: 32768, 38912 with AIME/AMC), else 4096."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N problems of each benchmark."),
    thinking: Optional[bool] = typer.Option(None, "--thinking/--no-thinking",
                                            help="Qwen3 thinking mode (chat template's enable_thinking); default: the template's."),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", help="Default: the model's generation_config when it samples, else the model family's, "
        "else 0 (greedy)."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="0 turns top-k off."),
    backend: str = typer.Option("transformers", "--backend", help="transformers or vllm (needs vLLM: its GPU build, or its CPU build)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Prompts per generate call (default 16; vllm 1024)."),
    seed: int = typer.Option(0, "--seed"),
    chat_template: Optional[bool] = typer.Option(
        None, "--chat-template/--no-chat-template", help="Prompt through the tokenizer's chat template when it has one. "
        "Default: as the model was trained (its mpdistill.json), else on."),
    prompt_template: Optional[str] = typer.Option(None, "--prompt-template", help="User message with {problem}; "
                                                  "default: the task's (math asks for step-by-step reasoning and a "
                                                  "\\boxed{} answer)."),
    question_field: str = typer.Option("problem", "--question-field", help="Question column of file/HF benchmarks."),
    answer_field: str = typer.Option("answer", "--answer-field", help="Answer column of file/HF benchmarks."),
    id_field: Optional[str] = typer.Option(None, "--id-field", help="Id column of file/HF benchmarks (default: row index)."),
    split: str = typer.Option("test", "--split", help="Split of a Hugging Face dataset."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="vllm backend only."),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, "--gpu-memory-utilization", help="vllm backend: the engine's share of GPU memory (vLLM's CPU build: of RAM); "
        "default 0.9 on a GPU, 0.3 on the CPU build."),
    allow_pickle_checkpoints: bool = ALLOW_PICKLE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
) -> None:
    """Accuracy and response tokens of a model on benchmarks: samples.jsonl, summary.json, summary.md."""
    from mpdistill.errors import ConfigError
    from mpdistill.evaluation.folder import EvalError
    from mpdistill.evaluation.runner import run_eval
    from mpdistill.evaluation.settings import EvalSpec
    from mpdistill.rollout.vllm import BackendUnavailable
    from mpdistill.tasks.problems import DataError

    spec = EvalSpec(
        model=model, benchmarks=None if benchmarks is None else [b.strip() for b in benchmarks.split(",") if b.strip()],
        task=task, backend=backend,
        n_samples=n_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
        thinking=thinking, chat_template=chat_template, prompt_template=prompt_template or "", batch_size=batch_size,
        seed=seed, limit=limit, question_field=question_field, answer_field=answer_field, id_field=id_field,
        split=split, tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
        allow_pickle_checkpoints=allow_pickle_checkpoints, trust_remote_code=trust_remote_code,
    )
    try:
        run_eval(spec, out, console=console)
    except (EvalError, DataError, ConfigError, BackendUnavailable) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        import shlex

        from mpdistill.evaluation.folder import samples_file

        samples = samples_file(out)
        done = sum(1 for _ in samples.open(encoding="utf-8", errors="replace")) if samples.exists() else 0
        command = shlex.join(["mpdistill", *sys.argv[1:]]) if sys.argv[1:2] == ["eval"] else "the same command"
        _interrupted(f"{done} graded samples are saved in {samples}; run {command} again to continue "
                     "(finished batches are kept, the rest is drawn as an uninterrupted run would)"
                     if done else f"No sample was finished yet; run {command} again to start")
    except Exception as err:  # noqa: BLE001 - only a refused write is said here
        _storage_failed(err, f"The graded samples written so far are kept in {out}; once it can be written again, run "
                        "the same command again to go on")


@app.command("compare")
def compare_cmd(
    base: Path = typer.Argument(..., help="Evaluation folder of the starting model (from mpdistill eval)."),
    new: Path = typer.Argument(..., help="Evaluation folder of the trained model."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write compare.json, compare.md, compare.png here."),
) -> None:
    """Per benchmark: accuracy change with a paired CI, token reduction and AES, base -> new."""
    from mpdistill.evaluation.compare import CompareError, compare_runs, format_comparison, write_comparison
    from mpdistill.errors import ConfigError
    from mpdistill.utils.console import warn
    from mpdistill.utils.paths import check_output_dir

    try:
        if out is not None:
            check_output_dir(out)
        result = compare_runs(base, new)
    except (CompareError, ConfigError) as err:
        _fail(str(err))
    console.print(format_comparison(result))
    for warning in result.get("warnings", []):
        warn(warning)
    if out is not None:
        paths = write_comparison(out, result)
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command("view")
def view_cmd(
    paths: list[Path] = typer.Argument(..., help="Training run folders, evaluation folders (mpdistill eval) or samples "
                                       ".jsonl files; each evaluation after the first is compared with it, problem "
                                       "by problem."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: view.html in the first folder)."),
    max_texts: int = typer.Option(2000, "--max-texts", help="Samples whose texts go on the page, per run or evaluation "
                                  "(every sample's metadata always does)."),
) -> None:
    """One self-contained HTML page of runs and evaluations: curves, every sample with its diff, and comparisons."""
    from mpdistill.errors import ConfigError  # not from .config, which loads transformers
    from mpdistill.utils.paths import check_output_file
    from mpdistill.view import ViewError, default_output, write_view

    try:
        target = out if out is not None else default_output(paths)
        check_output_file(target, "--out")
        written = write_view(paths, target, max_texts=max_texts)
    except (ViewError, ConfigError) as err:
        _fail(str(err))
    console.print(f"wrote {written}", markup=False)


@app.command("bench")
def bench_cmd(
    quick: bool = typer.Option(False, "--quick", help="A small run that checks every field (for tests)."),
    steps: bool = typer.Option(True, "--steps/--no-steps", help="Time MPD and OPD steps (default), or only the extras."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full result as JSON."),
    student: str = typer.Option("embedded:student", "--student", help="Model, or a config .json for random weights."),
    teacher: str = typer.Option("embedded:teacher", "--teacher", help="Model, or a config .json for random weights."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder (with config .json models)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default: the recipe's (--quick: 4)."),
    completion_length: Optional[int] = typer.Option(None, "--completion-length",
                                                    help="Default: the recipe's (--quick: 128)."),
    rewrite_tokens: Optional[int] = typer.Option(None, "--rewrite-tokens", help="Default: the recipe's."),
    prompt_length: int = typer.Option(128, "--prompt-length", help="Synthetic prompt tokens (random-weight models)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Steps per method before measuring (default 2; --quick: 1)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Measured steps per method (default 10; --quick: 2)."),
    seed: int = typer.Option(0, "--seed"),
    memory_lengths: Optional[str] = typer.Option(None, "--memory-lengths",
                                                 help="Comma-separated completion lengths: peak memory of MPD and OPD at each."),
    loss_memory: Optional[str] = typer.Option(None, "--loss-memory",
                                              help="Comma-separated token counts: peak memory of the distillation loss alone."),
    eval_throughput: bool = typer.Option(False, "--eval-throughput",
                                         help="Also time batched evaluation against a one-prompt-at-a-time loop."),
    rollout_throughput: bool = typer.Option(False, "--rollout-throughput",
                                            help="Also time rollouts on vLLM against transformers, same model and prompts "
                                            "(needs vLLM; its CPU build works here)."),
    throughput_model: str = typer.Option("embedded:teacher", "--throughput-model",
                                         help="Model for --rollout-throughput (the embedded student's head size has no "
                                         "kernel in vLLM's CPU build)."),
    demo_dir: Optional[Path] = typer.Option(None, "--demo-dir", help="A finished demo folder: training time to each token reduction."),
    rewrite_budgets: bool = typer.Option(True, "--rewrite-budgets/--no-rewrite-budgets",
                                         help="Stop each rewrite once it is too long to be accepted (default), or not."),
    served_latency: Optional[str] = typer.Option(
        None, "--served-latency", help="Comma-separated fractions of the OPD step (e.g. 0.25,0.5,1): MPD with a served "
        "rewriter answering after that delay, serial and overlapped, against OPD."),
    accumulation: int = typer.Option(4, "--accumulation", min=1,
                                     help="With --served-latency: micro-batches per optimizer step (the recipe's batch "
                                     "is split into them unless --batch-size sets each one's size)."),
) -> None:
    """MPD's training step against TRL's on-policy distillation step, phase by phase, in one process."""
    import json

    from mpdistill.experiments.bench.generation import bench_eval, bench_rollouts, format_eval, format_rollouts
    from mpdistill.experiments.bench.memory import bench_loss_memory, bench_memory, format_loss_memory, format_memory
    from mpdistill.experiments.bench.reduction import format_time_to_reduction, time_to_reduction
    from mpdistill.experiments.bench.steps import format_bench, run_bench
    from mpdistill.experiments.bench.trainers import QUICK, BenchSettings
    from mpdistill.errors import ConfigError

    given = {"batch_size": batch_size, "completion_length": completion_length, "rewrite_tokens": rewrite_tokens,
             "prompt_length": prompt_length, "warmup": warmup, "repeats": repeats}
    for name, value in given.items():  # 0 must not silently mean "the default"
        if value is not None and value < (0 if name == "warmup" else 1):
            _fail(f"--{name.replace('_', '-')} must be at least {0 if name == 'warmup' else 1}, got {value}")
    # --quick sets what was not given; a value given on the command line always wins.
    defaults = {"warmup": 2, "repeats": 10, **(QUICK if quick else {})}
    chosen = {k: v if v is not None else defaults.get(k) for k, v in given.items()}
    settings = BenchSettings(student=student, teacher=teacher, tokenizer=tokenizer, seed=seed,
                             rewrite_budgets=rewrite_budgets, **chosen)
    if json_out is not None:  # before the bench runs, not after
        from mpdistill.utils.paths import check_output_file

        try:
            check_output_file(json_out, "--json")
        except ConfigError as err:
            _fail(str(err))
    fractions = _fractions("--served-latency", served_latency) if served_latency is not None else None
    if demo_dir is not None and not (demo_dir / "results.json").exists():
        _fail(f"--demo-dir {demo_dir}: no results.json there (run mpdistill demo first)")
    if rollout_throughput:  # before anything runs: vLLM and its device can serve the model
        from mpdistill.models.loading import resolve_model
        from mpdistill.rollout.vllm import BackendUnavailable, check_engine

        try:
            check_engine("--rollout-throughput", 1, tp_key="tensor parallel size",
                         models={f"--throughput-model {throughput_model!r}": resolve_model(throughput_model)})
        except (BackendUnavailable, ConfigError) as err:
            _fail(str(err))
    result: dict = {}
    try:
        if steps:
            result["steps"] = run_bench(settings, progress=lambda msg: console.print(msg, highlight=False))
            console.print(format_bench(result["steps"]), markup=False, soft_wrap=True)
        if fractions:
            from mpdistill.experiments.bench.served_steps import format_served, run_served_bench

            result["served"] = run_served_bench(settings, fractions, accumulation=accumulation,
                                                progress=lambda msg: console.print(msg, highlight=False))
            console.print(format_served(result["served"]), markup=False, soft_wrap=True)
        if memory_lengths:
            result["memory"] = bench_memory(settings, _counts("--memory-lengths", memory_lengths))
            console.print(format_memory(result["memory"]), markup=False, soft_wrap=True)
    except ConfigError as err:
        _fail(str(err))
    if loss_memory:
        result["loss_memory"] = bench_loss_memory(_counts("--loss-memory", loss_memory))
        console.print(format_loss_memory(result["loss_memory"]), markup=False, soft_wrap=True)
    if eval_throughput:
        result["eval"] = bench_eval(n=40 if quick else 200, max_new_tokens=256)
        console.print(format_eval(result["eval"]), markup=False, soft_wrap=True)
    if rollout_throughput:
        result["rollouts"] = bench_rollouts(throughput_model, n=64 if quick else 256, repeats=2 if quick else 3)
        console.print(format_rollouts(result["rollouts"]), markup=False, soft_wrap=True)
    if demo_dir is not None:
        result["time_to_reduction"] = time_to_reduction(demo_dir)
        console.print(format_time_to_reduction(result["time_to_reduction"]), markup=False, soft_wrap=True)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}", markup=False)


def _fractions(option: str, text: str) -> list[float]:
    """A comma-separated list of positive numbers, or a clear error naming the option."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):  # nan and inf are no fraction
        _fail(f"{option} takes comma-separated positive numbers (fractions of the OPD step), got {text!r}")
    return values


def _counts(option: str, text: str) -> list[int]:
    """A comma-separated list of positive integers, or a clear error naming the option."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        _fail(f"{option} takes comma-separated positive integers, got {text!r}")
    return values


@app.command("rewrite")
def rewrite_cmd(
    input: Path = typer.Option(..., "--input", help='JSONL of {"problem", "trace"[, "answer"]} lines.'),
    out: Path = typer.Option(..., "--out", help="Output JSONL, one record per input row; re-running with it resumes."),
    backend: str = typer.Option("transformers", "--backend", help="transformers (local --teacher), vllm (--teacher on an in-process vLLM engine) or openai (served)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Rewriting model (transformers backend), or whose "
                                          "tokenizer counts tokens (openai backend without --tokenizer)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer that counts tokens (openai backend)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible API root, e.g. http://host:8000/v1."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name on the server (openai backend)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of the environment variable holding the API key."),
    task: str = typer.Option("math", "--task", help="How answers are read and compared: math or chain."),
    prompt_template: Optional[str] = typer.Option(None, "--prompt-template",
                                                  help="Rewrite prompt with {problem} and {trace} or {thinking}; default: the task's, as in training."),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template",
                                                 help="Send the prompt as a chat message (chat template / chat "
                                                 "completions); default: the task's (math: yes, chain: no)."),
    max_ratio: float = typer.Option(0.9, "--max-ratio", help="Accept a rewrite of at most this fraction of the trace's tokens."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Cap on each rewrite's length."),
    temperature: float = typer.Option(0.6, "--temperature"),
    top_p: float = typer.Option(0.95, "--top-p"),
    top_k: int = typer.Option(20, "--top-k", help="0 turns top-k off."),
    batch_size: int = typer.Option(64, "--batch-size", help="Rows per chunk; each finished chunk is written to --out."),
    seed: int = typer.Option(0, "--seed"),
    require_gold: bool = typer.Option(False, "--require-gold", help="Also reject rewrites whose answer is not the row's answer."),
    require_route_kept: bool = typer.Option(False, "--require-route-kept",
                                            help="Also reject rewrites that leave the student's route (route_changed)."),
    max_concurrency: int = typer.Option(8, "--max-concurrency", help="Requests in flight at once (openai backend)."),
    max_retries: int = typer.Option(3, "--max-retries", help="Retries of a failed request (openai backend)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds per request (openai backend)."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="GPUs for the teacher (vllm backend)."),
    teacher_thinking: Optional[bool] = typer.Option(
        None, "--teacher-thinking/--no-teacher-thinking", help="Whether the teacher thinks before it writes (chat "
        "template's enable_thinking). Default: it writes directly wherever that can be switched, as in training."),
    send_chat_template_kwargs: bool = typer.Option(
        True, "--send-chat-template-kwargs/--no-send-chat-template-kwargs",
        help="openai backend: send the thinking switch as chat_template_kwargs (vLLM, SGLang); off for a server "
        "that refuses unknown fields."),
    allow_pickle_checkpoints: bool = ALLOW_PICKLE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
) -> None:
    """Rewrite a file of traces with the training prompt, length budget and verification."""
    import json

    from mpdistill.errors import ConfigError
    from mpdistill.rewriting.offline import RewriteFileError, RewriteFileSpec, format_summary, rewrite_file

    spec = RewriteFileSpec(
        backend=backend, teacher=teacher, tokenizer=tokenizer, base_url=base_url, model=model, api_key_env=api_key_env,
        task=task, prompt_template=prompt_template, chat_template=chat_template,
        max_ratio=max_ratio, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
        batch_size=batch_size, seed=seed, require_gold=require_gold, require_route_kept=require_route_kept,
        max_concurrency=max_concurrency,
        max_retries=max_retries, timeout_s=timeout, tensor_parallel_size=tensor_parallel_size,
        teacher_thinking=teacher_thinking, send_chat_template_kwargs=send_chat_template_kwargs,
        allow_pickle_checkpoints=allow_pickle_checkpoints,
        trust_remote_code=trust_remote_code,
    )
    try:
        summary = rewrite_file(input, out, spec, console=console)
    except (RewriteFileError, ConfigError) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted(f"finished chunks are saved in {out}; run the same command again to continue")
    except Exception as err:  # noqa: BLE001 - only a refused write is said here
        _storage_failed(err, f"Finished chunks are kept in {out}; once it can be written again, run the same "
                        "command again to go on")
    console.print(format_summary(summary), markup=False, highlight=False)
    console.print(f"summary: {json.dumps(summary)}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out}", markup=False)
    if summary["failed"]:
        from mpdistill.utils.console import warn

        kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("backend_failures", {}).items()))
        said = (f"{summary['failed']} of {summary['n']} rows got no rewrite from the backend"
                f"{f' ({kinds})' if kinds else ''}; they are kept as backend_error and asked again by the same command")
        if summary["failed"] == summary["sent"]:
            _fail(said)  # nothing usable came back: a script must not take this run for a result
        warn(said)


@app.command()
def bootstrap(
    out: Path = typer.Option(..., "--out", help="Folder for student/ and teacher/."),
    seed: int = typer.Option(0, "--seed"),
    student_max_steps: Optional[int] = typer.Option(None, "--student-max-steps"),
    teacher_max_steps: Optional[int] = typer.Option(None, "--teacher-max-steps"),
    first_check: Optional[int] = typer.Option(None, "--first-check", help="First step with a validation check."),
    only: Optional[str] = typer.Option(
        None, "--only", help="Train only 'student' or only 'teacher'."
    ),
    world: str = WORLD,
) -> None:
    """Train an embedded world's student and teacher from scratch (deterministic from the seed)."""
    from dataclasses import asdict, replace

    from mpdistill.models.worlds import WORLDS, BootstrapPlan
    from mpdistill.models.worlds import bootstrap as run

    _world(world)
    # The world's own plan (its stop rules and checks), with this seed and these options.
    plan = BootstrapPlan(**{**asdict(WORLDS[world].plan), "seed": seed})
    for field, value in (
        ("student_max_steps", student_max_steps),
        ("teacher_max_steps", teacher_max_steps),
        ("first_check", first_check),
    ):
        if value is not None:
            plan = replace(plan, **{field: value})
    from mpdistill.models.worlds import STAGES

    if only is not None and only not in STAGES:
        _fail(f"--only must be one of {', '.join(STAGES)}; got {only!r}")
    names = (only,) if only else STAGES

    def progress(name: str, step: int, loss: float, scores: dict | None) -> None:
        if scores is not None:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            console.print(f"{name}: step {step} validation: {shown}")
        elif step == 1 or step % 100 == 0:
            console.print(f"{name}: step {step} loss {loss:.4f}")

    manifest = run(out, plan, progress=progress, only=names, world=world)
    for name, info in manifest["stages"].items():
        console.print(
            f"{name}: {info['parameters']:,} parameters, {info['steps']} steps, "
            f"final loss {info['final_loss']:.4f}, {info['seconds']}s"
        )


recipes_app = typer.Typer(rich_markup_mode=None, context_settings={"max_content_width": 120})
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback(invoke_without_command=True)
def recipes_cmd(ctx: typer.Context) -> None:
    """The shipped recipes and accelerate configs: lists them; `path NAME` prints one's file, `copy NAME` writes a copy to edit."""
    if ctx.invoked_subcommand is not None:
        return
    from mpdistill import recipes as shipped

    width = max(len(name) for name in shipped.names()) + 2
    for title, names in (
        ("recipes (mpdistill train NAME, mpdistill demo --recipe NAME):", shipped.recipe_names()),
        ('accelerate configs (accelerate launch --config_file "$(mpdistill recipes path NAME)" ...):',
         shipped.accelerate_names()),
    ):
        console.print(title)
        for name in names:
            console.print(f"  {name:<{width}}{shipped.description(name)}")
    console.print(f"in {shipped.HERE}; to edit one: mpdistill recipes copy NAME [DEST]")


@recipes_app.command("path")
def recipes_path(name: str = typer.Argument(..., help="e.g. embedded or accelerate/single_gpu.")) -> None:
    """Print a shipped file's path: accelerate launch --config_file "$(mpdistill recipes path accelerate/single_gpu)" ..."""
    from mpdistill.recipes import RecipeNotFound, shipped_path

    try:
        console.print(str(shipped_path(name)))
    except RecipeNotFound as err:
        _fail(str(err))


@recipes_app.command("copy")
def recipes_copy(
    name: str = typer.Argument(..., help="e.g. embedded or accelerate/multinode."),
    dest: Path = typer.Argument(Path("."), help="File, or existing folder, to write (default: the file's own name here)."),
) -> None:
    """Write an editable copy of a shipped recipe or accelerate config; an existing file is never overwritten."""
    from mpdistill.recipes import RecipeNotFound, shipped_path

    try:
        source = shipped_path(name)
    except RecipeNotFound as err:
        _fail(str(err))
    target = dest / source.name if dest.is_dir() else dest
    try:
        with target.open("x", encoding="utf-8") as f:
            f.write(source.read_text(encoding="utf-8"))
    except FileExistsError:
        _fail(f"{target} already exists; not overwriting it (give another DEST)")
    except OSError as err:
        _fail(f"cannot write {target}: {err.strerror or err}")
    console.print(f"wrote {target}")


def main() -> None:
    from mpdistill.utils.console import WarningLines

    handler = logging.StreamHandler()
    handler.setFormatter(WarningLines())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    from mpdistill.plugins import PluginError, load_plugins

    try:
        load_plugins()  # tasks, rewriter backends and methods other packages add
    except PluginError as err:
        from mpdistill.utils.console import error

        error(str(err))
        sys.exit(2)
    app()


if __name__ == "__main__":
    sys.exit(main())
