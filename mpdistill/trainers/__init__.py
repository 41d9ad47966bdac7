"""Step 4 of the pipeline: MPD and its baselines as TRL trainers, their config, and what every run shares (checkpoints, halts, logs)."""
