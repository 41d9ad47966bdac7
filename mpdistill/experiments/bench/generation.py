"""Generation throughput: batched evaluation against a one-prompt-at-a-time loop, and rollouts on
vLLM against ``transformers``, each on the same model and prompts."""

from __future__ import annotations

import statistics
import time

import torch

from mpdistill.experiments.bench.device import describe_device


def bench_eval(model_name: str = "embedded:student", n: int = 200, max_new_tokens: int = 256, batch_size: int = 250,
               seed: int = 0) -> dict:
    """Greedy tokens/s of :func:`generate_texts` (batched) and of a plain ``generate`` loop, same prompts.

    The loop is what one writes without batching: one prompt, one ``model.generate`` call, KV
    cache on. Both decode greedily, so their outputs should match token for token; the number of
    responses that differ is reported rather than assumed.
    """
    from mpdistill.models.loading import load_model
    from mpdistill.rollout import GenerationSettings, generate_texts
    from mpdistill.tasks.problems import chain_problems

    model, tok = load_model(model_name)
    model.eval()
    prompts = [p["prompt"] for p in chain_problems(n, seed, split="eval")]
    greedy = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    generate_texts(model, tok, prompts[:8], greedy)  # warm-up

    start = time.perf_counter()
    batched = generate_texts(model, tok, prompts, greedy)
    batched_s = time.perf_counter() - start

    eos = tok.eos_token_id
    loop_ids = []
    start = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            seq = out[0, ids.shape[1]:].tolist()
            loop_ids.append(seq[: seq.index(eos)] if eos in seq else seq)
    loop_s = time.perf_counter() - start

    tokens = sum(len(g.token_ids) for g in batched)
    loop_tokens = sum(map(len, loop_ids))
    differ = sum(g.token_ids != ids for g, ids in zip(batched, loop_ids))
    return {
        "device": describe_device(),
        "model": model_name,
        "n_prompts": n,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "batched": {"seconds": batched_s, "tokens": tokens, "tokens_per_second": tokens / batched_s},
        "one_at_a_time": {"seconds": loop_s, "tokens": loop_tokens, "tokens_per_second": loop_tokens / loop_s},
        "speedup": (tokens / batched_s) / (loop_tokens / loop_s),
        "responses_that_differ": differ,
    }


def format_eval(result: dict) -> str:
    b, o = result["batched"], result["one_at_a_time"]
    return (
        f"Device: {result['device']}. {result['model']}, {result['n_prompts']} prompts, greedy, "
        f"≤ {result['max_new_tokens']} new tokens.\n\n"
        "| generation | seconds | tokens | tokens / s |\n|---|---:|---:|---:|\n"
        f"| batched (`generate_texts`, batch {result['batch_size']}, length-sorted) | {b['seconds']:.2f} | {b['tokens']} "
        f"| {b['tokens_per_second']:.0f} |\n"
        f"| one prompt at a time (`model.generate` loop) | {o['seconds']:.2f} | {o['tokens']} | {o['tokens_per_second']:.0f} |\n\n"
        f"Speed-up: {result['speedup']:.1f}× tokens/s; responses that differ between the two: "
        f"{result['responses_that_differ']} of {result['n_prompts']}.\n"
    )


def bench_rollouts(model_name: str = "embedded:teacher", n: int = 256, max_new_tokens: int = 96, repeats: int = 2,
                   seed: int = 0, temperature: float = 1.0) -> dict:
    """Rollout tokens/s of the same model on ``transformers`` (:func:`generate_texts`) and on a vLLM
    engine (:class:`~mpdistill.rollout.vllm.VLLMGenerator`), same prompts, same sampling settings.

    The engine is started once (its start-up time is reported apart); then the two backends take
    turns (ABAB...) for ``repeats`` rounds and each figure is the median of its rounds. Samples are
    drawn at ``temperature``, as rollouts are, so the two backends' token counts differ a little.
    """
    from mpdistill.models.loading import load_model, resolve_model
    from mpdistill.rollout import GenerationSettings, generate_texts
    from mpdistill.rollout.vllm import VLLMGenerator
    from mpdistill.tasks.problems import chain_problems

    model, tok = load_model(model_name)
    if torch.cuda.is_available():  # each backend on the machine's accelerator, as a run would use it
        model = model.to("cuda")
    model.eval()
    prompts = [tok(p["prompt"], add_special_tokens=False)["input_ids"] for p in chain_problems(n, seed, split="eval")]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=n)
    start = time.perf_counter()
    engine = VLLMGenerator(resolve_model(model_name), seed=seed)
    engine_start_s = time.perf_counter() - start
    generate_texts(model, tok, prompts[:8], settings, seed=seed)  # warm-up, both
    engine.generate(prompts[:8], settings, list(range(8)))
    rounds: dict[str, list[dict]] = {"transformers": [], "vllm": []}
    for r in range(repeats):
        for name in ("transformers", "vllm"):
            start = time.perf_counter()
            if name == "transformers":
                gens = generate_texts(model, tok, prompts, settings, seed=seed + r)
            else:
                gens = engine.generate(prompts, settings, [seed + r * n + i for i in range(n)])
            seconds = time.perf_counter() - start
            tokens = sum(len(g.token_ids) for g in gens)
            rounds[name].append({"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds})
    result = {"device": describe_device(), "vllm_device": engine.device, "model": model_name, "n_prompts": n,
              "max_new_tokens": max_new_tokens, "temperature": temperature, "repeats": repeats,
              "engine_start_seconds": engine_start_s}
    for name, rows in rounds.items():
        result[name] = {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in rows), "rounds": rows}
    result["vllm_over_transformers"] = result["vllm"]["tokens_per_second"] / result["transformers"]["tokens_per_second"]
    return result


def format_rollouts(result: dict) -> str:
    t, v = result["transformers"], result["vllm"]
    return (
        f"Rollout throughput: {result['model']}, {result['n_prompts']} prompts per round, temperature "
        f"{result['temperature']:g}, ≤ {result['max_new_tokens']} new tokens, median of {result['repeats']} alternating "
        f"rounds. transformers on {result['device']}; vLLM on {result['vllm_device']} (engine start "
        f"{result['engine_start_seconds']:.0f} s, not counted).\n\n"
        "| backend | tokens / s (median) | tokens per round |\n|---|---:|---:|\n"
        f"| transformers (`generate_texts`, one batch) | {t['tokens_per_second']:.0f} | "
        f"{', '.join(str(r['tokens']) for r in t['rounds'])} |\n"
        f"| vLLM (`VLLMGenerator`) | {v['tokens_per_second']:.0f} | {', '.join(str(r['tokens']) for r in v['rounds'])} |\n\n"
        f"vLLM / transformers: {result['vllm_over_transformers']:.2f}×\n"
    )
