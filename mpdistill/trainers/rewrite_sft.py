"""``rewrite_sft``: cross-entropy on the accepted rewrites alone, no teacher logits in the loss."""

from __future__ import annotations

from dataclasses import replace

import torch

from mpdistill.rewriting.rewrite import RewriteSettings
from mpdistill.trainers.mpd import MPDTrainer


class RewriteSFTTrainer(MPDTrainer):
    """Baseline: cross-entropy on accepted rewrites only, no teacher logits in the loss."""

    _name = "Rewrite-SFT"
    _kl_loss = False
    _card_summary = ("The student samples a solution, the teacher rewrites it concisely, and the student is trained "
                     "by cross-entropy on the accepted rewrites alone.")

    def _rewrite_settings(self) -> RewriteSettings:
        # Cross-entropy on the student's own samples would be self-training, not this baseline.
        return replace(self.args.rewrite_settings(), on_reject="drop", on_policy_fraction=0.0)

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
        k = inputs["completion_ids"].size(1)
        hidden = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask, k)
        head = unwrapped_student.get_output_embeddings()
        nll = chunked_token_nll(hidden, head, inputs["completion_ids"], mask)
        n_valid = mask.sum()
        denom = num_items_in_batch if num_items_in_batch is not None else n_valid.clamp(min=1)
        loss = nll / denom
        return loss, torch.zeros((), device=loss.device), n_valid


def chunked_token_nll(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, mask: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Summed masked NLL, projecting ``chunk`` positions at a time (never B x L x V logits at once)."""
    h = hidden.reshape(-1, hidden.size(-1))
    t = targets.reshape(-1)
    keep = mask.reshape(-1) != 0
    h, t = h[keep], t[keep]
    # A graph-connected zero, so a batch whose samples were all dropped still backpropagates.
    total = hidden.sum().float() * 0.0
    for start in range(0, h.size(0), chunk):
        hs, ts = h[start : start + chunk], t[start : start + chunk]
        total = total + torch.utils.checkpoint.checkpoint(
            lambda x, y: torch.nn.functional.cross_entropy(head(x).float(), y, reduction="sum"),
            hs,
            ts,
            use_reentrant=False,
        )
    return total
