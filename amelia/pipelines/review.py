"""The review workflow: reviewer -> evaluator -> developer, until approved or out of passes."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from amelia.pipelines.parsing import parse_evaluation, parse_review
from amelia.pipelines.runtime import runtime_from
from amelia.pipelines.state import DEFAULT_MAX_REVIEW_PASSES, ReviewState


def _diff_prompt(state: ReviewState) -> str:
    text = f"Review this change:\n\n{state.get('diff_content') or ''}"
    if state.get("developer_summary"):
        text += f"\n\nThe developer has since changed:\n{state['developer_summary']}"
    return text


async def review_node(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    reply = await runtime_from(config).ask(
        "reviewer", "reviewer.agentic", _diff_prompt(state), step="reviewer"
    )
    verdict = parse_review(reply)
    iteration = state.get("review_iteration", 0) + 1
    return {"last_review": verdict.model_dump(), "review_iteration": iteration}


async def evaluation_node(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    review = state.get("last_review") or {}
    comments = review.get("comments", [])
    listing = "\n".join(
        f"{i}. [{c.get('severity')}] {c.get('file') or ''} {c.get('comment')}"
        for i, c in enumerate(comments)
    )
    reply = await runtime_from(config).ask(
        "evaluator", "evaluator.system", f"Review comments:\n{listing}", step="evaluator"
    )
    evaluation = parse_evaluation(reply, len(comments))
    return {"evaluation": evaluation.model_dump()}


async def review_fix_node(state: ReviewState, config: RunnableConfig) -> dict[str, Any]:
    review = state.get("last_review") or {}
    evaluation = state.get("evaluation") or {}
    comments = review.get("comments", [])
    accepted = [comments[i] for i in evaluation.get("accepted", [])]
    items = "\n".join(f"- {c.get('file') or ''}: {c.get('comment')}" for c in accepted)
    reply = await runtime_from(config).ask(
        "developer",
        "developer.review_fix",
        f"{_diff_prompt(state)}\n\nFix these accepted comments:\n{items}",
        step="developer",
    )
    return {"developer_summary": reply.strip()}


def _after_review(state: ReviewState) -> Literal["evaluation_node", "__end__"]:
    review = state.get("last_review") or {}
    passes = state.get("max_review_passes", DEFAULT_MAX_REVIEW_PASSES)
    if review.get("approved") or state.get("review_iteration", 0) >= passes:
        return "__end__"
    return "evaluation_node"


def _after_evaluation(state: ReviewState) -> Literal["review_fix_node", "__end__"]:
    evaluation = state.get("evaluation") or {}
    return "review_fix_node" if evaluation.get("accepted") else "__end__"


def create_review_graph(
    checkpointer: BaseCheckpointSaver[Any] | None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build and compile the review graph (no human interrupt)."""
    graph = StateGraph(ReviewState)
    graph.add_node("review_node", review_node)
    graph.add_node("evaluation_node", evaluation_node)
    graph.add_node("review_fix_node", review_fix_node)
    graph.add_edge(START, "review_node")
    graph.add_conditional_edges("review_node", _after_review)
    graph.add_conditional_edges("evaluation_node", _after_evaluation)
    graph.add_edge("review_fix_node", "review_node")
    return graph.compile(checkpointer=checkpointer)
