"""Step 5 of the pipeline: run a model over benchmarks, grade, report, compare; the statistics."""
