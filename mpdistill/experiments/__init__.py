"""The experiments on the embedded worlds: the demo, the study, the step-cost bench."""
