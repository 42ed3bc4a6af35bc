// One workflow: plan, live event timeline, token usage and cost, and the actions its state allows.

import { api, isAbort } from "../api.js";
import {
  busy,
  errorBox,
  fmtClock,
  fmtCost,
  fmtDateTime,
  fmtDuration,
  fmtInt,
  h,
  panel,
  replace,
  showError,
  statusBadge,
  toast,
} from "../dom.js";
import { LiveEvents } from "../live.js";
import { renderMarkdown } from "../markdown.js";

const MAX_EVENTS = 500;
// Events after which the header, plan and usage are re-read (status, plan or cost changed).
const REFRESH_ON = /^(workflow_|approval_|stage_|task_|review_|revision_)/;

// What each status allows (the orchestrator refuses anything else with 422 anyway).
const ACTIONS = {
  pending: ["start", "cancel"],
  in_progress: ["cancel"],
  blocked: ["approve", "reject", "replan", "cancel"],
  failed: ["resume"],
  completed: [],
  cancelled: [],
};
const LABELS = {
  approve: "Approve plan",
  reject: "Reject…",
  replan: "Replan",
  cancel: "Cancel workflow",
  resume: "Resume",
  start: "Start",
};
const DONE = {
  approve: "Plan approved",
  replan: "Replanning started",
  cancel: "Workflow cancelled",
  resume: "Workflow resumed",
  start: "Workflow started",
  reject: "Plan rejected",
};

function eventItem(event, fresh) {
  const trace = !(event.sequence > 0);
  return h(
    "li",
    {
      class: `level-${event.level || "debug"}${trace ? " trace" : ""}${fresh ? " fresh" : ""}`,
      dataset: { id: event.id, type: event.event_type, sequence: event.sequence },
    },
    h("span", {
      class: "when",
      title: fmtDateTime(event.timestamp),
      text: fmtClock(event.timestamp),
    }),
    h("span", { class: "dot" }),
    h(
      "div",
      {},
      h("span", { class: "what", text: event.event_type.replaceAll("_", " ") }),
      h("span", { class: "agent", text: event.agent }),
      h("div", { class: "msg", text: event.message }),
    ),
  );
}

function usageSection(usage) {
  if (!usage || !usage.breakdown || usage.breakdown.length === 0) {
    return panel("Token usage", h("p", { class: "muted", text: "No agent calls recorded yet." }));
  }
  const facts = [
    ["Cost", fmtCost(usage.total_cost_usd)],
    ["Input tokens", fmtInt(usage.total_input_tokens)],
    ["Output tokens", fmtInt(usage.total_output_tokens)],
    ["Cache reads", fmtInt(usage.total_cache_read_tokens)],
    ["Agent time", fmtDuration(usage.total_duration_ms)],
    ["Turns", fmtInt(usage.total_turns)],
  ];
  return panel(
    "Token usage",
    h(
      "dl",
      { class: "facts usage-totals" },
      facts.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]),
    ),
    h(
      "table",
      { class: "usage-breakdown", style: "margin-top:12px" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { text: "Agent" }),
          h("th", { text: "Model" }),
          ["In", "Out", "Time", "Cost"].map((t) => h("th", { class: "num", text: t })),
        ),
      ),
      h(
        "tbody",
        {},
        usage.breakdown.map((u) =>
          h(
            "tr",
            {},
            h("td", { text: u.agent }),
            h("td", { class: "mono", text: u.model }),
            h("td", { class: "num", text: fmtInt(u.input_tokens) }),
            h("td", { class: "num", text: fmtInt(u.output_tokens) }),
            h("td", { class: "num", text: fmtDuration(u.duration_ms) }),
            h("td", { class: "num", text: fmtCost(u.cost_usd) }),
          ),
        ),
      ),
    ),
  );
}

function planSection(workflow) {
  const children = [];
  // Plans usually state their goal; show it apart only when the plan text does not.
  const planHasGoal = workflow.goal && (workflow.plan_markdown || "").includes(workflow.goal);
  if (workflow.goal && !planHasGoal)
    children.push(h("p", { class: "goal" }, h("strong", { text: "Goal: " }), workflow.goal));
  if (workflow.plan_markdown) children.push(renderMarkdown(workflow.plan_markdown));
  else if (workflow.plan_path)
    children.push(
      h("p", { class: "muted", text: `Plan file: ${workflow.plan_path} (not readable)` }),
    );
  if (!children.length) {
    const text = workflow.status === "pending" ? "Not planned yet." : "No plan recorded.";
    children.push(h("p", { class: "muted", text }));
  }
  return panel("Plan", ...children);
}

export async function render(view, { params, signal }) {
  const id = params[0].toLowerCase();
  let workflow = await api(`/api/workflows/${id}`, { signal });

  const head = h("div");
  const actionsBox = h("div", { class: "actions" });
  const actionError = errorBox();
  const plan = h("div");
  const usage = h("div");
  const timeline = h("ol", { class: "timeline", "aria-label": "Event timeline" });
  const noEvents = h("p", { class: "muted no-events", text: "No events yet." });
  const eventCount = h("span", { class: "muted" });
  const shown = new Set();

  function addEvent(event, fresh) {
    if (shown.has(event.id)) return;
    shown.add(event.id);
    noEvents.remove();
    timeline.prepend(eventItem(event, fresh));
    while (timeline.children.length > MAX_EVENTS) timeline.lastElementChild.remove();
    eventCount.textContent = `${shown.size} event${shown.size === 1 ? "" : "s"}`;
  }

  function renderHead() {
    document.title = `${workflow.issue_id} · Amelia`;
    replace(
      head,
      h(
        "div",
        { class: "page-head" },
        h("h1", { text: workflow.issue_id }),
        statusBadge(workflow.status),
        h("span", { class: "grow" }),
        h("a", { href: "#/workflows", text: "← All workflows" }),
      ),
      h(
        "div",
        { class: "meta" },
        h("span", { class: "mono", text: workflow.worktree_path }),
        h("span", { text: `Created ${fmtDateTime(workflow.created_at)}` }),
        workflow.started_at
          ? h("span", { text: `Started ${fmtDateTime(workflow.started_at)}` })
          : null,
        workflow.completed_at
          ? h("span", { text: `Ended ${fmtDateTime(workflow.completed_at)}` })
          : null,
        h("span", { class: "mono", text: workflow.id }),
      ),
      workflow.failure_reason
        ? h("div", { class: "error-box failure", text: workflow.failure_reason })
        : null,
    );
  }

  async function act(action, button, body) {
    showError(actionError, null);
    try {
      await busy([...actionsBox.querySelectorAll("button")], () =>
        api(`/api/workflows/${id}/${action}`, { method: "POST", body, signal }),
      );
      toast(DONE[action]);
      await refresh();
    } catch (error) {
      if (!isAbort(error)) showError(actionError, error);
    }
  }

  function rejectForm() {
    const feedback = h("textarea", {
      rows: 3,
      name: "feedback",
      placeholder: "What should change in the plan?",
    });
    const send = h("button", { class: "danger confirm", type: "submit", text: "Reject plan" });
    return h(
      "form",
      {
        class: "reject-form",
        onsubmit: (event) => {
          event.preventDefault();
          if (!feedback.value.trim()) {
            showError(actionError, new Error("Say why the plan is rejected."));
            return;
          }
          act("reject", send, { feedback: feedback.value });
        },
      },
      feedback,
      h("div", { class: "actions" }, send),
    );
  }

  function renderActions() {
    const allowed = ACTIONS[workflow.status] || [];
    const slot = h("div");
    replace(
      actionsBox,
      allowed.length ? null : h("span", { class: "muted", text: "No actions in this state." }),
      allowed.map((action) =>
        h("button", {
          class:
            action === "approve" || action === "start" || action === "resume"
              ? "primary"
              : action === "cancel"
                ? "danger"
                : "",
          dataset: { action },
          text: LABELS[action],
          onclick: (event) => {
            if (action === "reject") replace(slot, rejectForm());
            else act(action, event.currentTarget);
          },
        }),
      ),
    );
    actionsBox.append(slot);
  }

  function renderAll() {
    renderHead();
    renderActions();
    replace(plan, planSection(workflow));
    replace(usage, usageSection(workflow.token_usage));
    for (const event of workflow.recent_events) addEvent(event, false);
  }

  async function refresh() {
    workflow = await api(`/api/workflows/${id}`, { signal });
    renderAll();
  }

  let timer = null;
  const scheduleRefresh = () => {
    clearTimeout(timer);
    timer = setTimeout(() => refresh().catch(() => {}), 300);
  };

  renderAll();
  replace(
    view,
    head,
    panel(null, actionsBox, actionError),
    h(
      "div",
      { class: "grid-2" },
      h("div", {}, plan, usage),
      panel(h("span", {}, "Timeline ", eventCount), shown.size ? null : noEvents, timeline),
    ),
  );

  const live = new LiveEvents({
    workflowId: id,
    onEvent: (event) => {
      addEvent(event, true);
      if (REFRESH_ON.test(event.event_type)) scheduleRefresh();
    },
    onResync: scheduleRefresh,
  });
  live.markSeen(workflow.recent_events);
  live.start();
  return () => {
    clearTimeout(timer);
    live.stop();
  };
}
