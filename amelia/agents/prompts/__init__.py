"""Prompts: built-in defaults, their stored versions, and the resolver that picks one."""
