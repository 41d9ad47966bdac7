"""The study's design, fixed before any run: its arms, the tuning rule and ladders, the seeds and decodings.

The rules:

1. **Arms.** Each row of the study is an *arm*: a registered method with some settings fixed
   (:data:`ARMS`). Besides MPD and the five baselines there are three controls that take MPD apart:
   OPD mixed with the teacher's own samples at the share of samples MPD trained on rewrites (does
   the rewrite carry more than that much teacher text?), MPD with rejected samples dropped (what does
   the on-policy fallback add?) and MPD whose teacher gives an accepted rewrite's targets after the
   concise instruction (does the teacher's own, verbose, context undo the cut?). Two baselines run
   in two forms: GRPO's length penalty gated by correctness and not, self-distillation's teacher
   frozen and refreshed.
2. **Tuning on validation only.** Each arm trains with seed 0 at every setting of its grid and
   answers ``n_validation`` problems of the *validation* split by greedy decoding. A tuned setting
   moves along a ladder (:data:`LADDERS`; learning rate for every arm, GRPO's penalty weight too),
   starting from a window in its middle. The choice: the most correct answers; among settings within
   ``TIE_POINTS`` of it (a count of answers, ``n_validation * TIE_POINTS // 100``), the fewest
   tokens in all; then the most correct; then the first tried. A choice at an edge of what was tried
   extends the grid one rung outward along that setting (the others as chosen) and the rule is
   applied again, until the choice is interior or the ladder ends; a choice at a ladder's end is
   flagged in every table.
3. **Seeds.** With its setting chosen, each arm trains with every seed of ``seeds`` (seed 0's
   run is the one from step 2). A seed changes the training problems, their order and every
   sample drawn; the evaluation problems stay the same, so arms are compared problem by problem.
4. **Evaluation once, at the end**, on ``n_eval`` problems of the *evaluation* split (never seen
   in training or tuning), by every model — base and teacher included — at each temperature of
   :data:`TEMPERATURES` (0 = greedy; top-p 1, top-k 0); a trained model with its own seed as the
   sampling seed, base and teacher with every seed (greedy once: it does not depend on the seed).
   The **headline is greedy decoding for every model** (one fixed decoding, deterministic, and one
   that gives no credit for merely sharpening a sampled distribution); 0.6 and 1.0 are shown beside it.
5. **Cost** per training run, from its own logs: student tokens sampled (GRPO's reference samples
   included), teacher tokens read to generate (rewrite prompts, teacher samples) and generated,
   tokens the loss ran on, tokens the loss's teacher forward read (prompt and completion of every
   sample), wall time; and the size of the model each arm uses as teacher.
6. **MPD against each arm**, per axis, seeds paired by index. Per problem, each arm's score is its
   mean over seeds (correct fraction; tokens); the 95% CI of the paired difference covers the
   evaluation problems. *Ahead* when that CI excludes zero and every seed pairing agrees in
   direction; *behind* likewise; otherwise *level*. Seed-to-seed spread is shown beside it.

"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

from mpdistill.models.worlds import DEFAULT_WORLD
from mpdistill.run.recipe import Recipe


@dataclass(frozen=True)
class Arm:
    """One row of the study: a registered ``method`` with ``fixed`` recipe settings (by section:
    ``{"training": {...}, "rewrite": {...}}``), tuned along ``tuned`` (keys of :data:`LADDERS`)."""

    name: str
    method: str
    label: str
    fixed: dict = field(default_factory=dict)
    tuned: tuple[str, ...] = ("learning_rate",)
    # For a control: what it changes in MPD, in the ablation table's words.
    changes: str | None = None


# Self-distillation's divergence is the reverse KL (OPSDC's); its refreshed teacher is a copy of the
# student every 20 of the 80 steps. GRPO's two forms differ only in the gate.
ARMS: tuple[Arm, ...] = (
    Arm("mpd", "mpd", "MPD"),
    Arm("opd", "opd", "OPD", changes="no rewrites: every sample is the student's own trace"),
    Arm("opd_mixed", "opd_mixed", "OPD + teacher samples (at MPD's rewrite share)",
        changes="the teacher's own solutions instead of rewrites of the student's, at the share MPD trained on rewrites"),
    Arm("mpd_drop", "mpd", "MPD, rejects dropped", {"rewrite": {"on_reject": "drop"}},
        changes="rejected samples dropped instead of trained on the student's own trace"),
    Arm("mpd_concise_teacher", "mpd", "MPD, teacher asked to be concise", {"rewrite": {"teacher_context": "concise"}},
        changes="the teacher gives a rewrite's targets after the concise instruction, not the problem alone"),
    Arm("offpolicy_kd", "offpolicy_kd", "off-policy KD"),
    Arm("rewrite_sft", "rewrite_sft", "rewrite-SFT"),
    Arm("self_distill", "self_distill", "self-distillation (frozen)", {"training": {"beta": 1.0}}),
    Arm("self_distill_refresh", "self_distill", "self-distillation (refreshed)",
        {"training": {"beta": 1.0, "teacher_sync_steps": 20}}),
    Arm("grpo_length", "grpo_length", "GRPO, gated length penalty", {"training": {"length_penalty_on": "correct"}},
        tuned=("learning_rate", "length_penalty")),
    Arm("grpo_length_ungated", "grpo_length", "GRPO, ungated length penalty", {"training": {"length_penalty_on": "all"}},
        tuned=("learning_rate", "length_penalty")),
)


ARMS_BY_NAME = {a.name: a for a in ARMS}


ARM_NAMES = tuple(ARMS_BY_NAME)


# The control whose teacher share is MPD's measured rewrite share (rule 1).
SHARE_FROM_MPD = "opd_mixed"


TEMPERATURES = (0.0, 0.6, 1.0)


HEADLINE_TEMPERATURE = 0.0


TIE_POINTS = 1


# Each tuned setting's ladder and the window tuning starts from; the ladder's ends are the limits.
LADDERS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "learning_rate": ((1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3), (1e-4, 3e-4, 1e-3)),
    "length_penalty": ((0.03, 0.1, 0.3, 1.0), (0.1, 0.3)),
}


# --quick: two rungs each and no room to extend, so that the rule still has a choice to make.
QUICK_LADDERS = {"learning_rate": ((3e-4, 1e-3), (3e-4, 1e-3)), "length_penalty": ((0.1, 0.3), (0.1, 0.3))}


N_VALIDATION, N_EVAL = 400, 500


QUICK = {"training": {"steps": 2, "batch_size": 8, "logging_steps": 1}, "data": {"n_train": 32}}


QUICK_N_VALIDATION, QUICK_N_EVAL = 16, 16


SHORT_NAMES = {"learning_rate": "lr", "length_penalty": "alpha"}


@dataclass
class Plan:
    world: str = DEFAULT_WORLD
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARM_NAMES
    n_validation: int = N_VALIDATION
    n_eval: int = N_EVAL
    temperatures: tuple[float, ...] = TEMPERATURES
    quick: bool = False
    ladders: dict = field(default_factory=lambda: LADDERS)

    @property
    def tie_count(self) -> int:
        return self.n_validation * TIE_POINTS // 100


def setting_name(setting: dict) -> str:
    return "_".join(f"{SHORT_NAMES.get(k, k)}{v:g}" for k, v in setting.items())


RULE = (f"the most correct validation answers (greedy); among settings within {TIE_POINTS} point of it as a count of "
        "answers, the fewest tokens in all, then the most correct, then the first tried; a choice at an edge of what "
        "was tried extends the grid one rung outward along that setting until it is interior or the ladder ends")


def choose_setting(scores: list[dict], tie_count: int) -> int:
    """The index of the chosen setting: ``scores`` hold counts (``correct``, ``tokens``: totals over the
    same validation problems), compared as integers."""
    best = max(s["correct"] for s in scores)
    close = [i for i, s in enumerate(scores) if best - s["correct"] <= tie_count]
    return min(close, key=lambda i: (scores[i]["tokens"], -scores[i]["correct"], i))


def tune(evaluate: Callable[[dict], dict], ladders: dict[str, tuple[tuple, tuple]], tie_count: int) -> dict:
    """Rule 2: try the starting windows' product, choose, and extend the grid outward from a choice at an
    edge until it is interior or a ladder ends. ``evaluate(setting) -> {"correct", "tokens", ...}``.

    Returns the settings tried (in order, with their scores), the chosen one, and per tuned setting
    where the choice sits: ``interior``, ``edge`` (at the end of what was tried with room left: only
    while extending) or ``limit`` (at the end of its ladder)."""
    dims = list(ladders)
    tried: list[dict] = []
    scores: list[dict] = []

    def run(setting: dict) -> None:
        if setting not in tried:
            tried.append(setting)
            scores.append(evaluate(setting))

    for values in itertools.product(*(ladders[d][1] for d in dims)):
        run(dict(zip(dims, values)))
    while True:
        chosen = tried[choose_setting(scores, tie_count)]
        where, extend = {}, []
        for d in dims:
            ladder = ladders[d][0]
            line = sorted({s[d] for s in tried if all(s[o] == chosen[o] for o in dims if o != d)}, key=ladder.index)
            at = ladder.index(chosen[d])
            outward = ([at - 1] if chosen[d] == line[0] else []) + ([at + 1] if chosen[d] == line[-1] else [])
            outward = [i for i in outward if 0 <= i < len(ladder)]
            if not (chosen[d] == line[0] or chosen[d] == line[-1]):
                where[d] = "interior"
            elif outward:
                where[d] = "edge"
                extend += [{**chosen, d: ladder[i]} for i in outward]
            else:
                where[d] = "limit"
        if not extend:
            return {"tried": [{"setting": s, **sc} for s, sc in zip(tried, scores)], "chosen": chosen,
                    "position": where, "flagged": sorted(d for d, w in where.items() if w != "interior")}
        for setting in extend:
            run(setting)


def arm_recipe(base: Recipe, arm: Arm, setting: dict, seed: int, extra: dict | None = None) -> Recipe:
    """``base`` with the arm's method, its fixed settings, ``extra`` fixed ones (the measured teacher
    share), the tuned ``setting`` (training keys) and ``seed``."""
    fixed = {**arm.fixed, "training": {**arm.fixed.get("training", {}), **(extra or {}), **setting}}
    sections = {key: type(getattr(base, key)).model_validate({**getattr(base, key).model_dump(), **values})
                for key, values in fixed.items()}
    return base.model_copy(update={"method": arm.method, "seed": seed, **sections})
