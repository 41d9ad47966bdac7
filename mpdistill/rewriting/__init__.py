"""Step 3 of the pipeline: the teacher rewrites a student trace, the rewrite is verified and mixed in; the rewriter backends; rewriting a file offline."""
