// Costs: usage over 7/30/90 days or a chosen range; totals, daily cost by model, per-model table.

import { api } from "../api.js";
import { colorFor, sparkline, stackedBarChart } from "../chart.js";
import { errorBox, fmtCompact, fmtCost, fmtInt, fmtPercent, h, panel, showError } from "../dom.js";

const PRESETS = ["7d", "30d", "90d"];
const MAX_BARS = 120; // longer ranges are drawn in buckets of several days

const DAY_MS = 86_400_000;
const isoDay = (ms) => new Date(ms).toISOString().slice(0, 10);
const dayMs = (iso) => Date.parse(`${iso}T00:00:00Z`);

/** The inclusive UTC days the request covers (as the server computes them). */
function rangeOf(query) {
  if (query.start && query.end) return { start: query.start, end: query.end };
  const days = Number.parseInt(query.preset || "30d", 10);
  const today = dayMs(isoDay(Date.now()));
  return { start: isoDay(today - (days - 1) * DAY_MS), end: isoDay(today) };
}

/** Bars for the chart: one per day, or per bucket of days for long ranges. */
function bars(range, trend) {
  const byDate = new Map(trend.map((point) => [point.date, point.by_model || {}]));
  const first = dayMs(range.start);
  const count = Math.round((dayMs(range.end) - first) / DAY_MS) + 1;
  const size = Math.ceil(count / MAX_BARS);
  const out = [];
  for (let offset = 0; offset < count; offset += size) {
    const values = {};
    for (let d = offset; d < Math.min(offset + size, count); d += 1) {
      for (const [model, cost] of Object.entries(byDate.get(isoDay(first + d * DAY_MS)) || {})) {
        values[model] = (values[model] || 0) + cost;
      }
    }
    out.push({ date: isoDay(first + offset * DAY_MS), values });
  }
  return { days: out, size };
}

function card(label, value, extra, cls = "") {
  return h(
    "div",
    { class: `card ${cls}` },
    h("div", { class: "label", text: label }),
    h("div", { class: "value", text: value }),
    extra,
  );
}

function changeLine(current, previous) {
  if (!previous) {
    return h("div", { class: "delta", text: current ? "no cost in the previous period" : "–" });
  }
  const change = (current - previous) / previous;
  const arrow = change > 0 ? "▲" : change < 0 ? "▼" : "•";
  return h("div", {
    class: `delta ${change > 0 ? "up" : change < 0 ? "down" : ""}`,
    title: `Previous period: ${fmtCost(previous)}`,
    text: `${arrow} ${fmtPercent(Math.abs(change))} vs previous period (${fmtCost(previous)})`,
  });
}

export async function render(view, { query, signal, navigate }) {
  document.title = "Costs · Amelia";
  const range = rangeOf(query);
  const custom = Boolean(query.start && query.end);
  const problem = errorBox();

  const start = h("input", { type: "date", name: "start", value: range.start });
  const end = h("input", { type: "date", name: "end", value: range.end });
  const controls = h(
    "div",
    { class: "row" },
    h(
      "div",
      { class: "seg", role: "group", "aria-label": "Period" },
      PRESETS.map((preset) =>
        h("button", {
          class: !custom && (query.preset || "30d") === preset ? "active" : "",
          dataset: { preset },
          text: `${Number.parseInt(preset, 10)} days`,
          onclick: () => navigate("/costs", { preset }),
        }),
      ),
    ),
    h(
      "form",
      {
        class: "row",
        onsubmit: (event) => {
          event.preventDefault();
          if (!start.value || !end.value) {
            showError(problem, new Error("Choose both a first and a last day."));
            return;
          }
          navigate("/costs", { start: start.value, end: end.value });
        },
      },
      start,
      h("span", { class: "muted", text: "to" }),
      end,
      h("button", { type: "submit", class: custom ? "active" : "", text: "Apply range" }),
    ),
  );

  let usage;
  try {
    usage = await api("/api/usage", {
      query: custom ? { start: range.start, end: range.end } : { preset: query.preset || "30d" },
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError" || error.status !== 400) throw error;
    showError(problem, error); // a range the server refuses (start after end, too long)
    view.replaceChildren(
      h("div", { class: "page-head" }, h("h1", { text: "Costs" }), controls),
      problem,
    );
    return undefined;
  }

  const { summary } = usage;
  const models = [...usage.by_model].sort((a, b) => b.cost_usd - a.cost_usd);
  const colors = Object.fromEntries(models.map((m, i) => [m.model, colorFor(i)]));
  for (const point of usage.trend) {
    for (const model of Object.keys(point.by_model || {})) {
      if (!(model in colors)) colors[model] = colorFor(Object.keys(colors).length);
    }
  }
  const { days, size } = bars(range, usage.trend);
  const total = summary.total_cost_usd;

  const cards = h(
    "div",
    { class: "cards" },
    card(
      "Total cost",
      fmtCost(total),
      changeLine(total, summary.previous_period_cost_usd),
      "total-cost",
    ),
    card(
      "Workflows",
      fmtInt(summary.total_workflows),
      h("div", { class: "delta", text: "with agent usage" }),
      "workflows",
    ),
    card(
      "Tokens",
      fmtCompact(summary.total_tokens),
      h("div", { class: "delta", text: `${fmtInt(summary.total_tokens)} in + out` }),
      "tokens",
    ),
    // The API counts completions and workflows with usage separately, so its rate can pass 1.
    card(
      "Success rate",
      fmtPercent(Math.min(summary.success_rate, 1)),
      h("div", {
        class: "delta",
        text: `${fmtInt(summary.successful_workflows)} completed in this period`,
      }),
      "success",
    ),
  );

  const chart = panel(
    size > 1 ? `Cost per ${size} days, by model` : "Daily cost by model",
    total > 0
      ? stackedBarChart(days, Object.keys(colors), colors)
      : h("p", { class: "muted empty-chart", text: "No usage recorded in this period." }),
    h(
      "div",
      { class: "legend" },
      Object.entries(colors).map(([model, color]) =>
        h("span", {}, h("span", { class: "swatch", style: `background:${color}` }), model),
      ),
    ),
  );

  const table = panel(
    "By model",
    h(
      "table",
      { class: "by-model" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { text: "Model" }),
          ["Workflows", "Tokens", "Cost", "Share", "Success"].map((t) =>
            h("th", { class: "num", text: t }),
          ),
          h("th", { text: "Trend" }),
        ),
      ),
      h(
        "tbody",
        {},
        models.length
          ? models.map((m) =>
              h(
                "tr",
                { dataset: { model: m.model } },
                h(
                  "td",
                  {},
                  h("span", { class: "swatch", style: `background:${colors[m.model]}` }),
                  h("span", { class: "mono", text: m.model }),
                ),
                h("td", { class: "num", text: fmtInt(m.workflows) }),
                h("td", { class: "num", text: fmtCompact(m.tokens) }),
                h("td", { class: "num", text: fmtCost(m.cost_usd) }),
                h("td", {
                  class: "num",
                  text: total > 0 ? fmtPercent(m.cost_usd / total, 1) : "–",
                }),
                h("td", { class: "num", text: fmtPercent(Math.min(m.success_rate, 1)) }),
                h("td", {}, sparkline(m.trend || [], colors[m.model])),
              ),
            )
          : h("tr", { class: "empty" }, h("td", { colspan: 7, text: "No usage in this period." })),
      ),
    ),
  );

  view.replaceChildren(
    h(
      "div",
      { class: "page-head" },
      h("h1", { text: "Costs" }),
      h("span", { class: "muted", text: `${range.start} – ${range.end} (UTC)` }),
      h("span", { class: "grow" }),
      controls,
    ),
    problem,
    cards,
    chart,
    table,
  );
  return undefined;
}
