// Workflows: the list with status and worktree filters and cursor paging, updated live.

import { api } from "../api.js";
import {
  STATUSES,
  fmtCost,
  fmtCompact,
  fmtDuration,
  h,
  panel,
  replace,
  statusBadge,
  statusLabel,
  timeAgo,
} from "../dom.js";
import { LiveEvents } from "../live.js";

const PAGE_SIZE = 20;
// Events that change a row's status or totals: the list reloads when one arrives.
const LIFECYCLE = /^(workflow_|approval_)/;

function row(workflow) {
  const href = `#/workflows/${workflow.id}`;
  return h(
    "tr",
    { dataset: { id: workflow.id } },
    h("td", {}, h("a", { href, class: "issue", text: workflow.issue_id })),
    h("td", {}, statusBadge(workflow.status)),
    h("td", {
      class: "truncate mono",
      title: workflow.worktree_path,
      text: workflow.worktree_path,
    }),
    h("td", { text: workflow.profile || "–" }),
    h("td", {}, timeAgo(workflow.started_at || workflow.created_at)),
    h("td", { class: "num", text: fmtDuration(workflow.total_duration_ms) }),
    h("td", { class: "num", text: fmtCompact(workflow.total_tokens) }),
    h("td", { class: "num", text: fmtCost(workflow.total_cost_usd) }),
  );
}

export async function render(view, { query, signal, navigate }) {
  document.title = "Workflows · Amelia";
  const filters = { status: query.status || "", worktree: query.worktree || "" };

  const status = h(
    "select",
    { name: "status" },
    h("option", { value: "", text: "All statuses" }),
    STATUSES.map((s) => h("option", { value: s, text: statusLabel(s) })),
  );
  status.value = filters.status;
  const worktree = h("input", {
    name: "worktree",
    type: "text",
    placeholder: "/path/to/worktree",
    size: 36,
    value: filters.worktree,
  });
  const form = h(
    "form",
    {
      class: "filters",
      onsubmit: (event) => {
        event.preventDefault();
        navigate("/workflows", { status: status.value, worktree: worktree.value.trim() });
      },
    },
    h("label", {}, "Status", status),
    h("label", {}, "Worktree", worktree),
    h("button", { type: "submit", class: "primary", text: "Filter" }),
    filters.status || filters.worktree
      ? h("button", { type: "button", text: "Clear", onclick: () => navigate("/workflows") })
      : null,
  );
  status.addEventListener("change", () => form.requestSubmit());

  const body = h("tbody");
  const count = h("span", { class: "muted" });
  const pager = h("div", { class: "pager" });
  const table = h(
    "table",
    { class: "workflows" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Issue", "Status", "Worktree", "Profile", "Started"].map((t) => h("th", { text: t })),
        ["Duration", "Tokens", "Cost"].map((t) => h("th", { class: "num", text: t })),
      ),
    ),
    body,
  );

  async function load() {
    const page = await api("/api/workflows", {
      query: { ...filters, limit: PAGE_SIZE, cursor: query.cursor },
      signal,
    });
    replace(
      body,
      page.workflows.length
        ? page.workflows.map(row)
        : h("tr", { class: "empty" }, h("td", { colspan: 8, text: "No workflows match." })),
    );
    count.textContent = `${page.total} workflow${page.total === 1 ? "" : "s"}`;
    replace(
      pager,
      query.cursor
        ? h("button", {
            text: "← First page",
            onclick: () => navigate("/workflows", filters),
          })
        : null,
      page.has_more && page.cursor
        ? h("button", {
            class: "next",
            text: "Next page →",
            onclick: () => navigate("/workflows", { ...filters, cursor: page.cursor }),
          })
        : null,
      // The API's cursor orders by start time: rows that never started cannot be paged to.
      page.has_more && !page.cursor
        ? h("span", {
            class: "muted",
            text: "More workflows have not started yet: filter by Pending to see them.",
          })
        : null,
    );
  }

  await load();
  replace(
    view,
    h("div", { class: "page-head" }, h("h1", { text: "Workflows" }), count),
    panel(null, form, table, pager),
  );

  // Reload (at most every 700 ms) when a workflow changes state anywhere.
  let timer = null;
  const reload = () => {
    clearTimeout(timer);
    timer = setTimeout(() => load().catch(() => {}), 700);
  };
  const live = new LiveEvents({
    onEvent: (event) => {
      if (LIFECYCLE.test(event.event_type)) reload();
    },
    onResync: reload,
  }).start();
  return () => {
    clearTimeout(timer);
    live.stop();
  };
}
