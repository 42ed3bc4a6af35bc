// Inline SVG charts: daily cost stacked by model, and per-model sparklines. No library.

import { fmtCost, svg } from "./dom.js";

export const PALETTE = [
  "#4f6bed",
  "#e8844a",
  "#2fa37a",
  "#c44f8f",
  "#8c6bd6",
  "#d3b138",
  "#3aa7c4",
  "#9a9a9a",
];

export function colorFor(index) {
  return PALETTE[index % PALETTE.length];
}

/** A round step (1, 2 or 5 times a power of ten) giving about `ticks` gridlines up to `max`. */
function niceStep(max, ticks) {
  if (max <= 0) return 1 / ticks;
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= raw - 1e-12) return step * power;
  }
  return 10 * power;
}

function shortDate(iso) {
  return new Date(`${iso}T00:00:00Z`).toLocaleDateString(undefined, {
    month: "short",
    day: "numeric",
    timeZone: "UTC",
  });
}

/**
 * A stacked bar chart of cost per day.
 * @param {Array<{date: string, label?: string, values: Object<string, number>}>} days
 *        one entry per bar, in order; `values` maps a model to its cost that day
 * @param {string[]} models stacking order (bottom first)
 * @param {Object<string, string>} colors model -> fill colour
 */
export function stackedBarChart(days, models, colors, { width = 960, height = 280 } = {}) {
  const pad = { top: 14, right: 12, bottom: 30, left: 64 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const totals = days.map((day) => Object.values(day.values).reduce((a, b) => a + b, 0));
  const step = niceStep(Math.max(0, ...totals), 5);
  const lines = Math.max(1, Math.ceil(Math.max(0, ...totals) / step - 1e-9));
  const top = step * lines;
  const y = (value) => pad.top + plotH - (value / top) * plotH;

  const root = svg("svg", {
    class: "cost-chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": "Daily cost stacked by model",
  });

  const grid = svg("g", { class: "grid" });
  for (let i = 0; i <= lines; i += 1) {
    const value = step * i;
    const yy = y(value);
    grid.append(
      svg("line", { x1: pad.left, x2: width - pad.right, y1: yy, y2: yy }),
      svg("text", { x: pad.left - 8, y: yy + 4, "text-anchor": "end" }, fmtCost(value)),
    );
  }
  root.append(grid);

  const slot = plotW / Math.max(days.length, 1);
  const barW = Math.max(1, Math.min(slot * 0.72, 48));
  const bars = svg("g", { class: "bars" });
  days.forEach((day, index) => {
    const x = pad.left + slot * index + (slot - barW) / 2;
    let base = 0;
    for (const model of models) {
      const cost = day.values[model] || 0;
      if (cost <= 0) continue;
      const y0 = y(base);
      const y1 = y(base + cost);
      base += cost;
      bars.append(
        svg(
          "rect",
          {
            class: "bar",
            x: x.toFixed(2),
            y: y1.toFixed(2),
            width: barW.toFixed(2),
            height: Math.max(y0 - y1, 0.5).toFixed(2),
            fill: colors[model],
            "data-date": day.date,
            "data-model": model,
            "data-cost": cost,
          },
          svg("title", {}, `${day.label || day.date} · ${model}: ${fmtCost(cost)}`),
        ),
      );
    }
  });
  root.append(bars);

  const axis = svg("g", { class: "axis" });
  const every = Math.max(1, Math.ceil(days.length / 10));
  days.forEach((day, index) => {
    if (index % every !== 0) return;
    const x = pad.left + slot * index + slot / 2;
    axis.append(
      svg("text", { x, y: height - 10, "text-anchor": "middle" }, day.label || shortDate(day.date)),
    );
  });
  axis.append(
    svg("line", {
      x1: pad.left,
      x2: width - pad.right,
      y1: pad.top + plotH,
      y2: pad.top + plotH,
    }),
  );
  root.append(axis);
  return root;
}

/** A small line of `values` (one per day), for tables. */
export function sparkline(values, color = PALETTE[0], { width = 120, height = 28 } = {}) {
  const root = svg("svg", {
    class: "sparkline",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": "Daily cost trend",
  });
  const list = values && values.length ? values : [0];
  const max = Math.max(...list, 0);
  const step = list.length > 1 ? width / (list.length - 1) : 0;
  const points = list
    .map((value, i) => {
      const yy = max > 0 ? height - 2 - (value / max) * (height - 4) : height - 2;
      return `${(i * step).toFixed(1)},${yy.toFixed(1)}`;
    })
    .join(" ");
  root.append(
    svg("polyline", {
      points: list.length > 1 ? points : `0,${height - 2} ${width},${height - 2}`,
      fill: "none",
      stroke: color,
      "stroke-width": 1.5,
      "stroke-linejoin": "round",
    }),
  );
  return root;
}
