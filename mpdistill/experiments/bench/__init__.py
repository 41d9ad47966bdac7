"""``mpdistill bench``: what an MPD step costs next to TRL's on-policy distillation (OPD) step.

One module per measurement: :mod:`.steps` (step time, phase by phase), :mod:`.memory` (peak
memory by completion length, and of the loss alone), :mod:`.generation` (evaluation and rollout
throughput), :mod:`.reduction` (training time to a token reduction, from a demo's logs). The
trainers they step are built in :mod:`.trainers` and timed by :mod:`.phases`.
"""
