"""Pydantic models of the server: workflow state, events, tokens, usage, brainstorm."""
