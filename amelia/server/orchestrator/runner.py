"""`GraphRunner`: drives a workflow's LangGraph graph on the PostgreSQL checkpointer.

A run starts fresh when the thread has no checkpoint and otherwise resumes from it (input
None), so a retry, a resume after a crash, or the continuation after an approval never
repeats a step that already completed. Stage events are emitted as the graph advances;
what a node returned is summarised, never stored whole (an event must stay small).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from amelia.pipelines.implementation import APPROVAL_NODE, create_implementation_graph
from amelia.pipelines.review import create_review_graph
from amelia.pipelines.runtime import AgentRuntime
from amelia.pipelines.state import DEFAULT_MAX_REVIEW_PASSES
from amelia.server.checkpoint import thread_config
from amelia.server.models.events import EventType
from amelia.server.models.state import PlanCache, ServerExecutionState, WorkflowType
from amelia.server.orchestrator.emitter import EventEmitter

logger = logging.getLogger(__name__)

# Loops are bounded by review passes and tasks; this only catches a runaway graph.
RECURSION_LIMIT = 500
_SUMMARY_KEYS = ("goal", "total_tasks", "current_task_index", "review_iteration", "outcome")


@dataclass(frozen=True)
class RunResult:
    """How a run ended: paused for approval, or finished with an outcome."""

    blocked: bool
    outcome: str | None
    values: dict[str, Any]


def initial_implementation_state(
    row: ServerExecutionState, max_review_passes: int = DEFAULT_MAX_REVIEW_PASSES
) -> dict[str, Any]:
    """The state a fresh implementation run starts from (issue and any external plan)."""
    plan = row.plan_cache or PlanCache()
    issue = row.issue_cache or {"id": row.issue_id, "title": row.issue_id, "description": ""}
    state: dict[str, Any] = {
        "workflow_id": str(row.id),
        "issue": issue,
        "external_plan": bool(plan.plan_markdown),
        "plan_markdown": plan.plan_markdown,
        "plan_path": plan.plan_path,
        "goal": plan.goal,
        "current_task_index": 0,
        "review_iteration": 0,
        "max_review_passes": max_review_passes,
        "human_approved": None,
    }
    return state


def _summary(update: Any) -> dict[str, Any]:
    if not isinstance(update, dict):
        return {}
    summary = {k: update[k] for k in _SUMMARY_KEYS if k in update}
    review = update.get("last_review")
    if isinstance(review, dict):
        summary["approved"] = review.get("approved")
        summary["comments"] = len(review.get("comments", []))
    return summary


def _stage(node: str) -> str:
    return node.removesuffix("_node")


class GraphRunner:
    """Runs the implementation and review graphs for the orchestrator."""

    def __init__(self, saver: Any, emitter: EventEmitter) -> None:
        self._emitter = emitter
        self._implementation: CompiledStateGraph[Any, Any, Any, Any] = create_implementation_graph(
            saver
        )
        self._review: CompiledStateGraph[Any, Any, Any, Any] = create_review_graph(saver)

    def _graph(self, workflow_type: WorkflowType) -> CompiledStateGraph[Any, Any, Any, Any]:
        return self._review if workflow_type == WorkflowType.REVIEW else self._implementation

    @staticmethod
    def config(workflow_id: Any, runtime: AgentRuntime | None = None) -> RunnableConfig:
        config = thread_config(workflow_id)
        configurable = dict(config.get("configurable") or {})
        if runtime is not None:
            configurable["runtime"] = runtime
        return {"configurable": configurable, "recursion_limit": RECURSION_LIMIT}

    async def has_checkpoint(self, row: ServerExecutionState) -> bool:
        snapshot = await self._graph(row.workflow_type).aget_state(self.config(row.id))
        return bool(snapshot.values)

    async def state_values(self, row: ServerExecutionState) -> dict[str, Any]:
        snapshot = await self._graph(row.workflow_type).aget_state(self.config(row.id))
        return dict(snapshot.values or {})

    async def set_approval(
        self, row: ServerExecutionState, approved: bool, feedback: str | None = None
    ) -> None:
        """Record the human decision in the checkpoint (the run continues from there)."""
        update: dict[str, Any] = {"human_approved": approved}
        if feedback is not None:
            update["human_feedback"] = feedback
        await self._implementation.aupdate_state(self.config(row.id), update)

    async def delete_checkpoint(self, row: ServerExecutionState, saver: Any) -> None:
        await saver.adelete_thread(str(row.id))

    async def run(
        self,
        row: ServerExecutionState,
        runtime: AgentRuntime,
        initial: dict[str, Any] | None,
    ) -> RunResult:
        """Run (or resume) the row's graph until it pauses for approval or ends.

        Args:
            row: the workflow.
            runtime: how nodes reach their agents.
            initial: the state for a fresh start; ignored when a checkpoint exists.
        """
        graph = self._graph(row.workflow_type)
        config = self.config(row.id, runtime)
        snapshot = await graph.aget_state(config)
        graph_input = None if snapshot.values else initial
        async for mode, chunk in graph.astream(
            graph_input, config, stream_mode=["tasks", "updates"]
        ):
            if mode == "tasks" and isinstance(chunk, dict) and "result" not in chunk:
                name = str(chunk.get("name", ""))
                if name and name != APPROVAL_NODE:
                    await self._emitter.emit(
                        row.id,
                        EventType.STAGE_STARTED,
                        f"Stage {_stage(name)} started",
                        data={"stage": _stage(name)},
                    )
            elif mode == "updates" and isinstance(chunk, dict):
                for node, update in chunk.items():
                    if node == "__interrupt__" or node == APPROVAL_NODE:
                        continue
                    await self._emitter.emit(
                        row.id,
                        EventType.STAGE_COMPLETED,
                        f"Stage {_stage(node)} completed",
                        data={"stage": _stage(node), "output": _summary(update)},
                    )
        final = await graph.aget_state(config)
        values = dict(final.values or {})
        if APPROVAL_NODE in (final.next or ()):
            return RunResult(blocked=True, outcome=None, values=values)
        return RunResult(blocked=False, outcome=values.get("outcome"), values=values)


RuntimeFactory = Callable[[ServerExecutionState], AgentRuntime]
