"""A run from a recipe: the recipe, the pre-run checks and dry run, the memory estimate, building the trainer, resuming."""
