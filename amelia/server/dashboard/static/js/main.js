// Entry point: hash routing (one index.html serves every page), the header, page lifecycle.
//
// A page module exports `render(view, ctx)`; ctx = {params, query, signal, navigate}. It may
// return a cleanup function (closing its live stream). Leaving a page aborts its `signal`,
// so its pending requests stop and late answers are ignored.

import { ApiError, isAbort } from "./api.js";
import { h, replace } from "./dom.js";
import { refreshHeader } from "./header.js";

const ROUTES = [
  { pattern: /^\/workflows\/([0-9a-fA-F-]{36})$/, page: "workflow", nav: "workflows" },
  { pattern: /^\/workflows$/, page: "workflows", nav: "workflows" },
  { pattern: /^\/costs$/, page: "costs", nav: "costs" },
  { pattern: /^\/settings$/, page: "settings", nav: "settings" },
  { pattern: /^\/profiles$/, page: "profiles", nav: "profiles" },
  { pattern: /^\/prompts(?:\/([A-Za-z0-9._-]+))?$/, page: "prompts", nav: "prompts" },
];
const DEFAULT_ROUTE = "#/workflows";

let current = { controller: null, cleanup: null };

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = raw.split("?");
  return { path, query: Object.fromEntries(new URLSearchParams(search)) };
}

/** Go to `path` with `query` (an object; empty values dropped); `replace` keeps no history. */
export function navigate(path, query = {}, { replace: noHistory = false } = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(key, value);
  }
  const search = params.toString();
  const target = `#${path}${search ? `?${search}` : ""}`;
  if (location.hash === target) route();
  else if (noHistory) location.replace(target);
  else location.hash = target;
}

async function route() {
  const routed = location.hash;
  const { path, query } = parseHash();
  const match = ROUTES.map((r) => ({ r, m: path.match(r.pattern) })).find((x) => x.m);
  if (!match) {
    location.replace(DEFAULT_ROUTE);
    return;
  }
  leave();
  const controller = new AbortController();
  current = { controller, cleanup: null };
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === match.r.nav);
  }
  const view = document.getElementById("view");
  view.dataset.page = match.r.page;
  view.setAttribute("aria-busy", "true");
  try {
    const module = await import(`./pages/${match.r.page}.js`);
    if (controller.signal.aborted) return;
    const params = match.m.slice(1).filter((p) => p !== undefined);
    const cleanup = await module.render(view, {
      params,
      query,
      signal: controller.signal,
      navigate,
    });
    if (controller.signal.aborted) {
      if (typeof cleanup === "function") cleanup();
      return;
    }
    current.cleanup = typeof cleanup === "function" ? cleanup : null;
  } catch (error) {
    if (isAbort(error) || controller.signal.aborted) return;
    showPageError(view, error);
  } finally {
    if (!controller.signal.aborted) {
      view.setAttribute("aria-busy", "false");
      view.dataset.rendered = routed; // which route the content shows (tests wait on it)
    }
  }
}

function leave() {
  if (current.controller) current.controller.abort();
  if (current.cleanup) current.cleanup();
  current = { controller: null, cleanup: null };
}

function showPageError(view, error) {
  if (!(error instanceof ApiError)) {
    // A bug in the page, not an answer from the server: make it visible to developers too.
    console.error(error);
  }
  replace(
    view,
    h(
      "div",
      { class: "panel page-error", role: "alert" },
      h("h2", { text: error instanceof ApiError && error.status === 404 ? "Not found" : "Error" }),
      h("p", { text: error.message || String(error) }),
      h("a", { href: DEFAULT_ROUTE, text: "Back to workflows" }),
    ),
  );
}

window.addEventListener("hashchange", route);
if (!location.hash || location.hash === "#" || location.hash === "#/") {
  location.replace(DEFAULT_ROUTE);
} else {
  route();
}
refreshHeader();
