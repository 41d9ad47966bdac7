"""Step 4 of the pipeline: MPD and its baselines as TRL trainers, one module per method (``mpd``,
``opd``, ``offpolicy_kd``, ``opd_mixed``, ``rewrite_sft``, ``self_distill``, ``grpo_length``), on what
they share (``base``), with their config (``config``) and registry (``methods``).

TRL's trainer samples the student (``_generate``), pads prompt and completion, and minimises the
chunked full-vocabulary generalized JSD between teacher and student at every completion token,
with the teacher conditioned on the original prompt. Each method here changes only *which*
completion the loss runs on, or the loss itself:

=================  ==========================================  ==============================
method             completion trained on                        loss
=================  ==========================================  ==============================
``opd``            the student's own sample ``y``                JSD(beta) vs teacher (TRL as is)
``mpd``            the teacher's verified rewrite ``z`` of ``y`` JSD(beta) vs teacher
``offpolicy_kd``   the teacher's own sample for the prompt      JSD(beta) vs teacher
``rewrite_sft``    accepted rewrites ``z`` only                 cross-entropy, no teacher logits
=================  ==========================================  ==============================

The hook is TRL's private ``_generate(prompts) -> (prompt_ids, completion_ids, tool_mask,
images, tool_images)``; ``tests/test_trl_contract.py`` fails loudly if it moves. A dropped
sample keeps its tokens but gets a zero loss mask through the ``tool_mask`` slot, which TRL
multiplies into the loss mask and the token count that normalises the loss.
"""
