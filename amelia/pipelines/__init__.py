"""LangGraph pipelines: the implementation workflow and the review workflow."""
