"""The rollout table in the trainer's trackers: with ``log_completions``, each logging step sends the
samples it trained on, one row each, with what MPD decided about them (the student's trace, the
rewrite, whether it was accepted and why, the tokens, what the loss ran on). W&B and trackio get a
table, TensorBoard a text summary; the same rows are in ``rollouts.jsonl``.

A row's ``step`` is the optimizer step the sample trained in, as the trackers and ``train_log.jsonl``
count steps (from 1); ``rollouts.jsonl`` records how many steps had finished when it was sampled (one
less)."""

from __future__ import annotations

from mpdistill.tasks.prompts import problem_text

COLUMNS = ("step", "prompt", "student", "rewrite", "teacher", "accepted", "reason", "student_tokens",
           "rewrite_tokens", "teacher_tokens", "trained_on")
TEXT_LIMIT = 4000  # characters of a text kept in a TensorBoard cell (the full text is in rollouts.jsonl)


def rollout_rows(records: list[dict], finished_steps: int) -> list[dict]:
    """The tracker's rows for one step's rollout-log records (written when ``finished_steps`` had finished)."""
    return [{**{key: r.get(key) for key in COLUMNS}, "step": finished_steps + 1,
             "prompt": _prompt_text(r.get("prompt"))} for r in records]


def _prompt_text(prompt) -> str | None:
    """The prompt's text (a chat's last user turn); a chat without one as it is written."""
    if prompt is None:
        return None
    try:
        return problem_text(prompt)
    except ValueError:
        return str(prompt)


def send_rollout_table(trainer, rows: list[dict]) -> None:
    """``rows`` to every tracker of ``trainer`` that keeps tables or text (main process only)."""
    import pandas as pd

    report_to = trainer.args.report_to or []
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    step = trainer.state.global_step
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({"rollouts": wandb.Table(dataframe=frame)}, commit=False)
    if "trackio" in report_to:
        import trackio

        trackio.log({"rollouts": trackio.Table(dataframe=frame)})
    writer = next((getattr(c, "tb_writer", None) for c in trainer.callback_handler.callbacks
                   if type(c).__name__ == "TensorBoardCallback"), None)
    if writer is not None:
        writer.add_text("rollouts", markdown_table(rows), step)
        writer.flush()


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (TensorBoard's text plugin renders it); long texts cut."""
    def cell(value) -> str:
        text = "" if value is None else str(value)
        text = text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "..."
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
