"""``mpdistill bench``: what an MPD step costs next to TRL's on-policy distillation (OPD) step.

:mod:`.run` is the whole command: what a request asks for, checked first, then each measurement.
One module per measurement: :mod:`.steps` (step time, phase by phase), :mod:`.served_steps` (MPD
with a served rewriter of controlled latency, :mod:`.served`, serial and overlapped), :mod:`.memory`
(peak memory by completion length, and of the loss alone), :mod:`.generation` (evaluation and
rollout throughput), :mod:`.reduction` (training time to a token reduction, from a demo's logs).
The trainers they step are built in :mod:`.trainers` and timed by :mod:`.phases`.
"""
