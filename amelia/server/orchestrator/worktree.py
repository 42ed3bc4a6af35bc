"""Checks on the worktrees and files a workflow request names."""

from __future__ import annotations

from pathlib import Path

from amelia.server.exceptions import InvalidWorktreeError

# Plans and design documents are read whole; anything bigger is surely a mistake.
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024


def validate_worktree(worktree_path: str, *, require_git: bool) -> str:
    """Return the resolved worktree path, or raise `InvalidWorktreeError` saying why not."""
    if "\x00" in worktree_path:
        raise InvalidWorktreeError(worktree_path, "the path contains a NUL character")
    path = Path(worktree_path)
    if not path.is_absolute():
        raise InvalidWorktreeError(worktree_path, "the path must be absolute")
    resolved = path.resolve()
    if not resolved.exists():
        raise InvalidWorktreeError(worktree_path, "the directory does not exist")
    if not resolved.is_dir():
        raise InvalidWorktreeError(worktree_path, "the path is not a directory")
    if require_git and not (resolved / ".git").exists():
        raise InvalidWorktreeError(worktree_path, "the directory is not a git worktree (no .git)")
    return str(resolved)


def read_inside_worktree(worktree: str, relative_or_absolute: str) -> str:
    """Read a text file that must lie inside `worktree`.

    Raises:
        ValueError: the path points outside the worktree or the file is too large.
        FileNotFoundError: the file does not exist.
    """
    root = Path(worktree).resolve()
    candidate = Path(relative_or_absolute)
    target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{relative_or_absolute} is outside the worktree {worktree}")
    if not target.is_file():
        raise FileNotFoundError(f"{relative_or_absolute} does not exist in the worktree")
    if target.stat().st_size > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{relative_or_absolute} is larger than {MAX_DOCUMENT_BYTES} bytes")
    return target.read_text(encoding="utf-8", errors="replace")
