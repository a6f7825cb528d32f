"""xtallm pipelines."""
