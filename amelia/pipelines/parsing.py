"""Strict parsers for agent replies: the architect's plan and the reviewer/evaluator verdicts.

Reply formats are fixed by the prompts in `amelia/agents/prompts/defaults.py`. A reply that
does not follow them raises `ReplyFormatError`, which fails the step with a clear message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field, ValidationError


class ReplyFormatError(ValueError):
    """An agent's reply does not follow the format its prompt asks for."""


class ParsedPlan(BaseModel):
    """The parts of a plan the workflow needs."""

    title: str
    goal: str
    key_files: list[str]
    tasks: list[str] = Field(min_length=1)
    markdown: str

    @property
    def total_tasks(self) -> int:
        return len(self.tasks)


_TITLE = re.compile(r"^#\s+(?P<title>\S.*)$", re.MULTILINE)
_GOAL = re.compile(r"^\*\*Goal:\*\*\s*(?P<goal>\S.*)$", re.MULTILINE)
_TASK = re.compile(r"^###\s+Task\s+(?P<n>\d+)\s*:\s*(?P<title>\S.*)$", re.MULTILINE)
_KEY_FILE = re.compile(r"^-\s+`(?P<path>[^`]+)`", re.MULTILINE)
_KEY_FILES_SECTION = re.compile(r"^##\s+Key files\s*$(?P<body>.*?)(?=^##\s|\Z)", re.M | re.S)


def parse_plan(markdown: str) -> ParsedPlan:
    """Parse a plan written in the architect's format.

    Raises:
        ReplyFormatError: a required part is missing or the tasks are not numbered 1..N.
    """
    text = markdown.strip()
    if not text:
        raise ReplyFormatError("the plan is empty")
    title = _TITLE.search(text)
    goal = _GOAL.search(text)
    if title is None:
        raise ReplyFormatError("the plan has no '# <title>' line")
    if goal is None:
        raise ReplyFormatError("the plan has no '**Goal:** ...' line")
    tasks = [(int(m["n"]), m["title"].strip()) for m in _TASK.finditer(text)]
    if not tasks:
        raise ReplyFormatError("the plan has no '### Task 1: ...' heading")
    numbers = [n for n, _ in tasks]
    if numbers != list(range(1, len(tasks) + 1)):
        raise ReplyFormatError(f"tasks must be numbered 1..{len(tasks)}, found {numbers}")
    section = _KEY_FILES_SECTION.search(text)
    key_files = [m["path"] for m in _KEY_FILE.finditer(section["body"])] if section else []
    return ParsedPlan(
        title=title["title"].strip(),
        goal=goal["goal"].strip(),
        key_files=key_files,
        tasks=[t for _, t in tasks],
        markdown=text + "\n",
    )


class ReviewComment(BaseModel):
    severity: str = Field(pattern="^(critical|major|minor)$")
    file: str | None = None
    comment: str = Field(min_length=1)


class ReviewVerdict(BaseModel):
    """The reviewer's structured verdict."""

    approved: bool
    summary: str
    comments: list[ReviewComment] = Field(default_factory=list)


class Evaluation(BaseModel):
    """The evaluator's triage of review comments (indexes into the comment list)."""

    accepted: list[int] = Field(default_factory=list)
    rejected: list[int] = Field(default_factory=list)
    reason: str = ""


def _json_object(reply: str, who: str) -> dict[str, Any]:
    text = reply.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(?P<body>.*?)\s*```", text, flags=re.S)
    if fenced:
        text = fenced["body"]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReplyFormatError(f"the {who} reply is not one JSON object: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ReplyFormatError(f"the {who} reply is JSON but not an object")
    return value


def parse_review(reply: str) -> ReviewVerdict:
    """Parse the reviewer's JSON verdict (a ```json fence around it is tolerated)."""
    try:
        return ReviewVerdict.model_validate(_json_object(reply, "reviewer"))
    except ValidationError as exc:
        raise ReplyFormatError(
            f"the reviewer verdict is malformed: {exc.errors()[0]['msg']}"
        ) from None


def parse_evaluation(reply: str, comment_count: int) -> Evaluation:
    """Parse the evaluator's triage; indexes must point at existing comments."""
    try:
        evaluation = Evaluation.model_validate(_json_object(reply, "evaluator"))
    except ValidationError as exc:
        raise ReplyFormatError(f"the evaluation is malformed: {exc.errors()[0]['msg']}") from None
    bad = [i for i in evaluation.accepted + evaluation.rejected if not 0 <= i < comment_count]
    if bad:
        raise ReplyFormatError(f"the evaluation names comments that do not exist: {bad}")
    return evaluation
