"""xtallm llm."""
