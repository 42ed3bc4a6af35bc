// DOM building and formatting helpers shared by every page.
// Elements are built with createElement/textContent only: text from the API never becomes HTML.

/**
 * Create an element. `attrs` keys: `class`, `text`, `on<event>` (listener), `dataset`,
 * `style`, boolean attributes (true sets, false/null omits), anything else as an attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") el.style.cssText = value;
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "value" || key === "checked" || key === "disabled") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Create an SVG element (attributes set verbatim). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Replace the content of `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const money = new Intl.NumberFormat("en-US", {
  style: "currency",
  currency: "USD",
  minimumFractionDigits: 2,
  maximumFractionDigits: 2,
});
const smallMoney = new Intl.NumberFormat("en-US", {
  style: "currency",
  currency: "USD",
  minimumFractionDigits: 4,
  maximumFractionDigits: 4,
});
const integer = new Intl.NumberFormat("en-US");

/** USD with cents; sub-cent amounts keep four decimals so they do not read as $0.00. */
export function fmtCost(value) {
  if (value === null || value === undefined) return "–";
  return value !== 0 && Math.abs(value) < 0.01 ? smallMoney.format(value) : money.format(value);
}

export function fmtInt(value) {
  return value === null || value === undefined ? "–" : integer.format(value);
}

/** 12.3k / 4.5M: compact token counts for cards and tables. */
export function fmtCompact(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) < 10_000) return integer.format(value);
  const units = [
    [1e9, "B"],
    [1e6, "M"],
    [1e3, "k"],
  ];
  for (const [size, unit] of units) {
    if (Math.abs(value) >= size) return `${(value / size).toFixed(1)}${unit}`;
  }
  return String(value);
}

export function fmtPercent(fraction, digits = 0) {
  if (fraction === null || fraction === undefined) return "–";
  return `${(fraction * 100).toFixed(digits)}%`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "–";
  const seconds = Math.round(ms / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${seconds % 60}s`;
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m`;
}

export function fmtDateTime(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString(undefined, {
    dateStyle: "medium",
    timeStyle: "short",
  });
}

export function fmtClock(iso) {
  return iso ? new Date(iso).toLocaleTimeString(undefined, { hour12: false }) : "";
}

/** "3 min ago"-style time with the exact time as a tooltip. */
export function timeAgo(iso) {
  if (!iso) return h("span", { class: "muted", text: "–" });
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  let text;
  if (seconds < 60) text = "just now";
  else if (seconds < 3600) text = `${Math.floor(seconds / 60)} min ago`;
  else if (seconds < 86400) text = `${Math.floor(seconds / 3600)} h ago`;
  else text = `${Math.floor(seconds / 86400)} d ago`;
  return h("time", { datetime: iso, title: fmtDateTime(iso), text });
}

export const STATUSES = ["pending", "in_progress", "blocked", "completed", "failed", "cancelled"];

const STATUS_LABELS = {
  pending: "Pending",
  in_progress: "Running",
  blocked: "Awaiting approval",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

export function statusLabel(status) {
  return STATUS_LABELS[status] || status;
}

export function statusBadge(status) {
  return h("span", {
    class: `badge status-${status}`,
    dataset: { status },
    text: statusLabel(status),
  });
}

let toastTimer = null;

/** A short message at the bottom of the screen. */
export function toast(message, kind = "ok") {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.className = `show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.className = "";
  }, 3500);
}

/** A titled panel. */
export function panel(title, ...children) {
  const heading = title ? h("h2", {}, title) : null;
  return h("section", { class: "panel" }, heading, ...children);
}

/** An error box for a failed request (hidden while empty). */
export function errorBox() {
  return h("div", { class: "error-box", role: "alert", hidden: true });
}

export function showError(box, error) {
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.hidden = false;
  replace(box, error.message || String(error));
}

/** Run `action` with `button` disabled meanwhile (no double submits). */
export async function busy(button, action) {
  const buttons = Array.isArray(button) ? button : [button];
  for (const b of buttons) b.disabled = true;
  try {
    return await action();
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}
