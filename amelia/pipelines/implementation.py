"""The implementation workflow.

architect -> plan validation -> human approval (interrupt) -> developer <-> reviewer, with a
bounded number of review passes per task and one developer/reviewer loop per plan task.
An external plan (given by the user) skips the architect.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from amelia.pipelines.parsing import ReplyFormatError, parse_plan, parse_review
from amelia.pipelines.runtime import runtime_from
from amelia.pipelines.state import DEFAULT_MAX_REVIEW_PASSES, ImplementationState

APPROVAL_NODE = "human_approval_node"


def _issue_text(state: ImplementationState) -> str:
    issue = state.get("issue") or {}
    return (
        f"Issue {issue.get('id', '?')}: {issue.get('title', '')}\n\n"
        f"{issue.get('description', '')}".strip()
    )


def _task_text(state: ImplementationState) -> str:
    tasks = state.get("tasks") or []
    index = state.get("current_task_index", 0)
    task = tasks[index] if index < len(tasks) else "(no task)"
    parts = [
        f"Goal: {state.get('goal') or ''}",
        f"Task {index + 1} of {len(tasks)}: {task}",
        "",
        "Plan:",
        state.get("plan_markdown") or "",
    ]
    review = state.get("last_review")
    if review and not review.get("approved"):
        comments = "\n".join(
            f"- [{c.get('severity')}] {c.get('file') or ''} {c.get('comment')}"
            for c in review.get("comments", [])
        )
        parts += ["", "Review feedback to address:", review.get("summary", ""), comments]
    return "\n".join(parts)


async def architect_node(state: ImplementationState, config: RunnableConfig) -> dict[str, Any]:
    reply = await runtime_from(config).ask(
        "architect", "architect.plan", _issue_text(state), step="architect"
    )
    plan = parse_plan(reply)
    return {
        "plan_markdown": plan.markdown,
        "goal": plan.goal,
        "key_files": plan.key_files,
        "tasks": plan.tasks,
        "total_tasks": plan.total_tasks,
        "current_task_index": 0,
    }


async def plan_validator_node(state: ImplementationState) -> dict[str, Any]:
    # The plan is checked locally and strictly: an invalid plan fails here, before approval.
    plan = parse_plan(state.get("plan_markdown") or "")
    return {
        "goal": plan.goal,
        "key_files": plan.key_files,
        "tasks": plan.tasks,
        "total_tasks": plan.total_tasks,
        "current_task_index": state.get("current_task_index", 0),
    }


async def human_approval_node(state: ImplementationState) -> dict[str, Any]:
    # The graph is interrupted before this node; the approval arrives as a state update.
    return {}


async def developer_node(state: ImplementationState, config: RunnableConfig) -> dict[str, Any]:
    index = state.get("current_task_index", 0)
    reply = await runtime_from(config).ask(
        "developer", "developer.system", _task_text(state), step=f"developer:{index + 1}"
    )
    return {"developer_summary": reply.strip()}


async def reviewer_node(state: ImplementationState, config: RunnableConfig) -> dict[str, Any]:
    index = state.get("current_task_index", 0)
    prompt = f"{_task_text(state)}\n\nDeveloper's summary:\n{state.get('developer_summary') or ''}"
    reply = await runtime_from(config).ask(
        "reviewer", "reviewer.agentic", prompt, step=f"reviewer:{index + 1}"
    )
    verdict = parse_review(reply)
    iteration = state.get("review_iteration", 0) + 1
    return {"last_review": verdict.model_dump(), "review_iteration": iteration}


async def next_task_node(state: ImplementationState) -> dict[str, Any]:
    index = state.get("current_task_index", 0) + 1
    return {"current_task_index": index, "review_iteration": 0, "last_review": None}


def _start(state: ImplementationState) -> Literal["architect_node", "plan_validator_node"]:
    return "plan_validator_node" if state.get("external_plan") else "architect_node"


def _after_approval(state: ImplementationState) -> Literal["developer_node", "__end__"]:
    return "developer_node" if state.get("human_approved") else "__end__"


def _after_review(
    state: ImplementationState,
) -> Literal["next_task_node", "developer_node", "finish_node"]:
    review = state.get("last_review") or {}
    more_tasks = state.get("current_task_index", 0) + 1 < state.get("total_tasks", 1)
    passes = state.get("max_review_passes", DEFAULT_MAX_REVIEW_PASSES)
    if review.get("approved") or state.get("review_iteration", 0) >= passes:
        return "next_task_node" if more_tasks else "finish_node"
    return "developer_node"


async def finish_node(state: ImplementationState) -> dict[str, Any]:
    review = state.get("last_review") or {}
    outcome = "approved" if review.get("approved") else "review_passes_exhausted"
    return {"outcome": outcome}


def create_implementation_graph(
    checkpointer: BaseCheckpointSaver[Any] | None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build and compile the implementation graph, interrupted before human approval."""
    graph = StateGraph(ImplementationState)
    graph.add_node("architect_node", architect_node)
    graph.add_node("plan_validator_node", plan_validator_node)
    graph.add_node(APPROVAL_NODE, human_approval_node)
    graph.add_node("developer_node", developer_node)
    graph.add_node("reviewer_node", reviewer_node)
    graph.add_node("next_task_node", next_task_node)
    graph.add_node("finish_node", finish_node)
    graph.add_conditional_edges(START, _start)
    graph.add_edge("architect_node", "plan_validator_node")
    graph.add_edge("plan_validator_node", APPROVAL_NODE)
    graph.add_conditional_edges(APPROVAL_NODE, _after_approval)
    graph.add_edge("developer_node", "reviewer_node")
    graph.add_conditional_edges("reviewer_node", _after_review)
    graph.add_edge("next_task_node", "developer_node")
    graph.add_edge("finish_node", END)
    return graph.compile(checkpointer=checkpointer, interrupt_before=[APPROVAL_NODE])


__all__ = ["APPROVAL_NODE", "ReplyFormatError", "create_implementation_graph"]
