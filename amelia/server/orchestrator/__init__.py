"""The orchestrator: runs workflows through their LangGraph pipelines."""
