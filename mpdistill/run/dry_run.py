"""What ``mpdistill train RECIPE --dry-run`` prints: the resolved run, checked without loading weights.

Model facts come from each model's config alone (an empty model is built on the ``meta`` device to
count parameters), data rows are counted for local sources, and the devices are probed. Problems
that would stop the run are collected as one line each in ``["errors"]`` of :func:`describe_run`;
what depends on the devices of the machine it will run on, when checked on one without a GPU, in
``["warnings"]``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mpdistill.models.loading import resolve_model
from mpdistill.rewriting.backends import get_backend
from mpdistill.run.checks import pre_run_problems
from mpdistill.run.recipe import Recipe
from mpdistill.tasks import get_task
from mpdistill.trainers.methods import get_method, teacher_source
from mpdistill.utils.paths import ASSETS, ROLLOUTS, TRAIN_LOG, looks_local

NOT_OFFLINE = "not available offline; checked at load time"
# Configs of Hub models the shipped recipes name, for a plan made offline (assets/configs/SOURCE.md).
SHIPPED_CONFIGS = ASSETS / "configs"


def count_parameters(config) -> int | None:
    """Parameters of the model ``config`` describes, counted on an empty (meta-device) model."""
    from mpdistill.run.memory import parameter_count

    try:
        return parameter_count(config)
    except Exception:  # an architecture without a causal-LM class: leave the count out
        return None


def describe_model(key: str, name: str) -> tuple[dict, list[str]]:
    """``key`` is the recipe key (``student`` / ``teacher``), named in any error."""
    from transformers import AutoConfig

    info: dict = {"name": name, "path": None, "source": None, "model_type": None, "parameters": None,
                  "vocab_size": None, "note": None, "config": None}
    try:
        path = resolve_model(name)
    except ValueError:  # said by the pre-run checks
        return info, []
    info["path"] = path
    local = looks_local(path)
    info["source"] = "local folder" if local else "Hugging Face Hub"
    if local and not Path(path).expanduser().is_dir():  # said by the pre-run checks
        info["note"] = "no such folder"
        return info, []
    shipped = SHIPPED_CONFIGS / path
    try:
        config = AutoConfig.from_pretrained(str(Path(path).expanduser()) if local else path, local_files_only=True)
        info["source"] = "local folder" if local else "Hugging Face Hub (config in the local cache)"
    except Exception as err:  # noqa: BLE001 - reported, never raised: nothing is loaded in a dry run
        if local:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return info, [f"{key}: cannot read the model config in {path}: {first}"]
        if not (shipped / "config.json").is_file():
            info["note"] = NOT_OFFLINE
            return info, []
        config = AutoConfig.from_pretrained(str(shipped))
        info["source"] = "Hugging Face Hub (its config shipped with mpdistill)"
    info["config"] = config
    text = config.get_text_config()
    info["model_type"] = config.model_type
    info["vocab_size"] = getattr(text, "vocab_size", None)
    info["parameters"] = count_parameters(config)
    return info, []


def describe_data(recipe: Recipe, tokenizer) -> tuple[dict, list[str], list[dict] | None]:
    """The training data: its kind and row count where it is here, and its longest prompt in tokens
    where the student's ``tokenizer`` is here too (``longest_prompt``, None otherwise); and the rows
    (None where they are not here to read)."""
    from mpdistill.run.checks import longest_prompt
    from mpdistill.run.pipeline import training_problems
    from mpdistill.tasks.problems import DataError

    d = recipe.data
    info = {"source": d.train, "kind": None, "split": d.split, "rows": None, "n_train": d.n_train,
            "prompt_style": d.prompt_style, "note": None, "longest_prompt": None}
    if d.train == "embedded:chain":
        info["kind"] = "embedded chain task (generated)"
    elif looks_local(d.train, data_file=True):
        info["kind"] = "local file"
    else:
        info["kind"] = "Hugging Face dataset" + (f" (configuration {d.config})" if d.config else "")
        info["note"] = "not counted offline"
        return info, [], None
    try:
        rows = training_problems(recipe)
    except (DataError, ValueError, OSError) as err:
        return info, [f"data.train: {err}"], None
    info["rows"] = len(rows)
    if rows and tokenizer is not None:
        info["longest_prompt"] = longest_prompt(recipe, rows, tokenizer)[1]
    return info, [], rows


def local_tokenizer(info: dict):
    """The tokenizer of a model described by :func:`describe_model` when it is a local folder that
    has one (tokenizers load without the weights); None otherwise."""
    from transformers import AutoTokenizer

    if info["path"] is None or not looks_local(info["path"]):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(Path(info["path"]).expanduser()), local_files_only=True)
    except Exception:  # noqa: BLE001 - a folder without tokenizer files is reported when the run loads it
        return None


def probe_devices() -> dict:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = [torch.cuda.get_device_name(i) for i in range(n)]
    memory = [torch.cuda.get_device_properties(i).total_memory for i in range(n)]
    return {"cuda": n, "names": names, "memory": memory, "bf16_supported": bool(n and torch.cuda.is_bf16_supported())}


def describe_run(recipe: Recipe, out: str | Path | None = None) -> dict:
    """The run ``recipe`` describes, resolved and checked without loading any weights."""
    errors: list[str] = []
    student, e = describe_model("student", recipe.student)
    errors += e
    teacher_name = teacher_source(recipe)
    if teacher_name is None:  # a method without a teacher (grpo_length): nothing to load or compare
        teacher, e = {"name": None, "path": None, "source": None, "model_type": None, "parameters": None,
                      "vocab_size": None, "note": f"not used by {recipe.method}", "config": None}, []
    else:
        teacher, e = describe_model("teacher", teacher_name)
    errors += e
    sv, tv = student["vocab_size"], teacher["vocab_size"]
    vocab_match = None if sv is None or tv is None else sv == tv
    if vocab_match is False:
        errors.append(f"teacher: vocab_size {tv} differs from the student's {sv}; both must share one tokenizer")

    tokenizer = local_tokenizer(student)  # read once: the data's longest prompt and the pre-run checks use it
    data, e, rows = describe_data(recipe, tokenizer)
    errors += e

    t = recipe.training
    warnings: list[str] = []
    from mpdistill.run.checks import same_model_problem

    if same := same_model_problem(recipe):
        warnings.append(same)
    devices = probe_devices()
    devices["bf16_requested"] = t.bf16
    if t.bf16 and not devices["bf16_supported"]:
        if devices["cuda"]:
            errors.append("training.bf16: bf16 is requested but the visible GPU does not support it; set "
                          "training.bf16: false or run on a GPU that does")
        else:  # planned here, run elsewhere: only the GPU nodes can say
            warnings.append("training.bf16: no CUDA device is visible here, so bf16 is not checked; the run needs "
                            "GPUs that support it (or training.bf16: false)")

    from mpdistill.errors import ConfigError

    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    # What the run itself checks before loading, with what can be read here: servers are not contacted
    # (they may not be up while a run is planned), and on a machine without a GPU (a login node planning
    # for GPU nodes) a problem with this machine's devices is a warning.
    problems = pre_run_problems(recipe, rows, processes, servers=False, gpus_here=bool(devices["cuda"]),
                                tokenizer=tokenizer,
                                teacher_tokenizer=local_tokenizer(teacher) if teacher["path"] else None)
    errors += problems.errors
    warnings += problems.warnings
    batch = {"per_device": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps,
             "processes": processes, "effective": t.batch_size * t.gradient_accumulation_steps * processes}

    r = recipe.rewrite
    if not get_method(recipe.method).rewrites:
        rewrite = {"backend": None, "detail": f"not used by {recipe.method}"}
    else:
        rewrite = {"backend": r.backend, "detail": get_backend(r.backend).describe(r, recipe.teacher)}
    rewrite.update(max_new_tokens=r.max_new_tokens, use_chat_template=r.use_chat_template)
    v = t.vllm
    if v is None:
        rollouts = "transformers generate"
    elif v.mode == "colocate":
        rollouts = (f"vLLM colocated with training (TRL use_vllm; tensor parallel {v.tensor_parallel_size}, "
                    f"{v.gpu_memory_utilization:g} of GPU memory{', sleep mode' if v.enable_sleep_mode else ''})")
    else:
        rollouts = f"vLLM server at {v.server_base_url} (TRL use_vllm, server mode)"

    outputs = None
    if out is not None:
        run = Path(out)
        names = ["model/", ROLLOUTS, TRAIN_LOG, "recipe.yaml"] + (["adapter/"] if t.lora else [])
        outputs = {"run_dir": str(run), "files": names}
        from mpdistill.trainers.checkpoints import existing_run
        from mpdistill.utils.paths import check_output_dir

        try:
            check_output_dir(run)
        except ConfigError as err:
            errors.append(str(err))
        else:
            if why := existing_run(run):
                errors.append(f"--out: {why}")

    memory, memory_errors, memory_warnings = describe_memory(recipe, student, teacher, data, processes, devices)
    errors += memory_errors
    warnings += memory_warnings
    return {
        "method": recipe.method,
        "method_settings": method_settings(recipe),
        "sampling": describe_sampling(recipe, student, teacher),
        "memory": memory,
        "task": recipe.task,
        "seed": recipe.seed,
        "student": student,
        "teacher": teacher,
        "vocab_match": vocab_match,
        "data": data,
        "devices": devices,
        "batch": batch,
        "steps": t.steps,
        "learning_rate": t.learning_rate,
        "max_completion_length": t.max_completion_length,
        "rewrite": rewrite,
        "rollouts": rollouts,
        "lora": t.lora.model_dump() if t.lora else None,
        "outputs": outputs,
        "errors": errors,
        "warnings": warnings,
    }


def describe_memory(recipe: Recipe, student: dict, teacher: dict, data: dict, processes: int,
                    devices: dict) -> tuple[dict | None, list[str], list[str]]:
    """The estimate of :mod:`mpdistill.run.memory` for this run (None without the student's config), an
    error when its peak passes the memory of the GPU visible here even sharded, and a warning when it
    fits only sharded."""
    from mpdistill.run.memory import ASSUMED_PROMPT_TOKENS, estimate, format_table, peak

    if student["parameters"] is None or (teacher["name"] is not None and teacher["parameters"] is None):
        return None, [], []  # a config not readable here, or of no causal LM
    measured = data["longest_prompt"]
    prompt = measured if measured is not None else ASSUMED_PROMPT_TOKENS
    method = get_method(recipe.method)
    parts = estimate(recipe, student["config"], teacher["config"], prompt_tokens=prompt,
                     rewrites=method.rewrites and recipe.rewrite.backend == "transformers",
                     teacher_samples=method.teacher_text and not method.rewrites,
                     student_parameters=student["parameters"], teacher_parameters=teacher["parameters"])
    gpu = min(devices.get("memory") or [0]) or None  # the smallest visible GPU bounds the run
    lines = format_table(parts, processes, gpu, devices["names"][0] if devices["names"] else None)
    lines.insert(1, f"  (prompts: {prompt} tokens, " + ("the longest training prompt)" if measured is not None else
                                                          "assumed: the training prompts are not readable here)"))
    v = recipe.training.vllm
    if v is not None and v.mode == "colocate":
        lines.append(f"  plus the colocated vLLM engine (the student's rollouts and their KV cache): "
                     f"{v.gpu_memory_utilization:g} of each GPU's memory, reserved when it starts")
    r = recipe.rewrite
    if method.rewrites and r.backend == "vllm":
        share = f"{r.gpu_memory_utilization:g} of each GPU's memory" if r.gpu_memory_utilization else "its default share"
        lines.append(f"  plus the in-process vLLM rewriter (its own copy of the rewriting model and the rewrites' KV "
                     f"cache): {share}, reserved when it starts")
    errors = []
    # vLLM engines on the training GPUs reserve their share of each GPU when they start.
    engines = ((v.gpu_memory_utilization if v is not None and v.mode == "colocate" else 0)
               + ((r.gpu_memory_utilization or 0.9) if method.rewrites and r.backend == "vllm" else 0))
    warnings = []
    if gpu:
        with_engines = f" with the vLLM engines' {engines:g} share" if engines else ""
        # The launch's accelerate config says whether the held parts are sharded; a dry run does not know it.
        whole, sharded = (peak(parts) + engines * gpu, peak(parts, processes, sharded=True) + engines * gpu)
        if sharded > gpu:
            errors.append(f"memory: the estimated peak, {sharded / 1e9:.1f} GB per device{with_engines}"
                          f"{' even sharded over ' + str(processes) + ' processes' if processes > 1 else ''}, passes "
                          f"the {gpu / 1e9:.1f} GB of the visible GPU; lower training.batch_size, "
                          "training.gradient_accumulation_steps or rewrite.batch_size, use LoRA, or shard over more GPUs")
        elif whole > gpu:
            warnings.append(f"memory: the estimated peak, {whole / 1e9:.1f} GB per device{with_engines}, fits the "
                            f"{gpu / 1e9:.1f} GB of the visible GPU only with ZeRO-3 or FSDP over the {processes} "
                            f"processes ({sharded / 1e9:.1f} GB); launch with one of those accelerate configs")
    return {"lines": lines, "peak_bytes": peak(parts), "prompt_tokens": prompt}, errors, warnings


def describe_sampling(recipe: Recipe, student: dict, teacher: dict) -> dict:
    """How the student's rollouts and the teacher's rewrites are sampled, beside what each model's
    card recommends for the mode it runs in (``card`` None where the family's card is not known)."""
    def family(info: dict) -> str | None:
        """The model's type from its config, else from a Hub name that says it (a plan made offline)."""
        if info["model_type"] is not None:
            return info["model_type"]
        return "qwen3" if re.search(r"(^|/)qwen3[-_]", info["name"] or "", re.IGNORECASE) else None

    def recommended(info: dict, thinking: bool, switched: bool) -> tuple[dict | None, str | None]:
        """What `mpdistill eval` would sample the model with in that mode (prompts.sampling_defaults: its
        own generation_config where it samples, else its family's card), and where that comes from."""
        from transformers import GenerationConfig

        from mpdistill.tasks.prompts import sampling_defaults

        own = None
        if info["path"] is not None and looks_local(info["path"]):
            try:
                own = GenerationConfig.from_pretrained(str(Path(info["path"]).expanduser()), local_files_only=True)
            except Exception:  # noqa: BLE001 - a folder without one: the family's card, if any
                own = None
        values, label = sampling_defaults(family(info), thinking, own, thinking_given=switched)
        if label == "the model's generation_config":
            return values, "its generation_config"
        return (values, f"the {family(info)} card") if family(info) and not label.startswith("greedy") else (None, None)

    t, r = recipe.training, recipe.rewrite
    # Qwen3's template thinks unless switched off; a rewriting teacher writes directly unless switched on.
    student_thinks = t.student_enable_thinking is not False
    teacher_thinks = r.teacher_enable_thinking is True
    card, source = recommended(student, student_thinks, t.student_enable_thinking is not None)
    out = {"student": {"temperature": t.temperature, "top_p": t.top_p, "top_k": t.top_k, "thinking": student_thinks,
                       "card": card, "source": source}}
    if get_method(recipe.method).rewrites:
        # A served teacher's card is the server's model's, not known here.
        # Its thinking is switched (off unless asked for) wherever its prompt goes through its chat template.
        chat = r.use_chat_template if r.use_chat_template is not None else get_task(recipe.task).rewrite_chat
        switched = r.teacher_enable_thinking is not None or chat
        card, source = (None, None) if get_backend(r.backend).served else recommended(teacher, teacher_thinks, switched)
        out["rewrites"] = {"temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k, "thinking": teacher_thinks,
                           "card": card, "source": source}
    return out


def _sampling_line(role: str, s: dict, note: str = "") -> str:
    line = f"{role} sampling: temperature {s['temperature']:g}, top-p {s['top_p']:g}, top-k {s['top_k']}"
    card = s["card"]
    if card is None:
        return line + note
    mode = (" for " + ("thinking" if s["thinking"] else "non-thinking") + " mode") if "card" in s["source"] else ""
    same = (card["temperature"], card["top_p"], card["top_k"]) == (s["temperature"], s["top_p"], s["top_k"])
    return line + (f" (as {s['source']} recommends{mode})" if same else
                   f" ({s['source']} recommends {card['temperature']:g} / {card['top_p']:g} / {card['top_k']}{mode})") + note


def method_settings(recipe: Recipe) -> str | None:
    """The method's own settings in words, for the dry run (None: nothing beyond the common ones)."""
    t, r, m = recipe.training, recipe.rewrite, get_method(recipe.method)
    if recipe.method == "opd_mixed":
        return f"{t.teacher_share:g} of the samples replaced by the teacher's own (GKD's lambda {1 - t.teacher_share:g})"
    if m.self_teacher:
        return ("teacher: the frozen initial student" if t.teacher_sync_steps is None else
                f"teacher: the student, refreshed every {t.teacher_sync_steps} steps (rate {t.teacher_update_rate:g})")
    if recipe.method == "grpo_length":
        gate = "correct answers only" if t.length_penalty_on == "correct" else "every answer"
        return f"length penalty {t.length_penalty:g} x tokens / reference, on {gate}; {t.num_generations} per group"
    if m.rewrites:
        context = "the problem" if r.teacher_context == "problem" else "the problem and the concise instruction"
        reject = "the student's own trace" if r.on_reject == "student" else "dropped"
        return (f"accepted if at most {r.max_ratio:g} x the student's tokens; a rejected sample: {reject}; the teacher "
                f"scores a rewrite after {context}")
    return None


def _params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _model_line(role: str, m: dict) -> str:
    where = m["name"] if m["path"] in (None, m["name"]) else f"{m['name']} -> {m['path']}"
    head = f"{role}: {where}"
    if m["source"]:
        head += f" [{m['source']}]"
    if m["note"]:
        return f"{head}; {m['note']}"
    if m["model_type"] is None:
        return head
    return f"{head}; {m['model_type']}, {_params(m['parameters'])} parameters (from config), vocab {m['vocab_size']}"


def format_run_description(p: dict) -> str:
    """:func:`describe_run` as plain lines (the CLI prints them as they are)."""
    lines = [f"method: {p['method']} (task {p['task']}, seed {p['seed']})"
             + (f": {p['method_settings']}" if p.get("method_settings") else ""),
             _model_line("student", p["student"]), _model_line("teacher", p["teacher"])]
    vm = p["vocab_match"]
    lines.append("vocab sizes: " + ("match" if vm else "DIFFER" if vm is False else "unknown until load"))
    d = p["data"]
    rows = d["note"] if d["rows"] is None and d["note"] else f"{d['rows']} rows" if d["rows"] is not None else "?"
    split = f" split {d['split']}," if d["kind"] == "Hugging Face dataset" else ""
    lines.append(f"data: {d['source']} ({d['kind']},{split} n_train {d['n_train']}, {d['prompt_style']} prompts): {rows}")
    dev = p["devices"]
    shown = f"{dev['cuda']} CUDA device(s): {', '.join(dev['names'])}" if dev["cuda"] else "CPU (no CUDA device visible)"
    if dev["bf16_requested"]:
        shown += "; bf16 " + ("usable" if dev["bf16_supported"] else "NOT usable")
    lines.append(f"devices: {shown}")
    b = p["batch"]
    lines.append(f"batch: {b['per_device']} per device x {b['gradient_accumulation_steps']} accumulation x "
                 f"{b['processes']} process(es) = {b['effective']} prompts per optimizer step")
    lines.append(f"steps: {p['steps']}, learning rate {p['learning_rate']:g}, "
                 f"completion length {p['max_completion_length']}")
    lines.append(f"student rollouts: {p['rollouts']}")
    sampling = p["sampling"]
    lines.append(_sampling_line("student", sampling["student"], "; the loss reads the logits at that temperature too"))
    rw = p["rewrite"]
    extra = f" (max_new_tokens {rw['max_new_tokens']}, chat template {'on' if rw['use_chat_template'] else 'off'})"
    lines.append(f"rewrites: {rw['detail']}" + (extra if rw["backend"] else ""))
    if "rewrites" in sampling:
        lines.append(_sampling_line("rewrite", sampling["rewrites"]))
    if p.get("memory"):
        lines += p["memory"]["lines"]
    lo = p["lora"]
    lines.append("lora: off (full fine-tuning)" if lo is None else
                 f"lora: r {lo['r']}, alpha {lo['alpha']}, dropout {lo['dropout']}, on {', '.join(lo['target_modules'])}")
    o = p["outputs"]
    lines.append("outputs: (no --out given)" if o is None else f"outputs: {o['run_dir']}/ -> {', '.join(o['files'])}")
    return "\n".join(lines)
