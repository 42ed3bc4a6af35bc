// Prompts: each prompt's versions, a new version, reset to the default, default beside current.

import { api, ApiError } from "../api.js";
import { busy, errorBox, fmtDateTime, h, panel, replace, showError, toast } from "../dom.js";

function promptList(prompts, selected) {
  return h(
    "ul",
    { class: "list prompt-list" },
    prompts.map((p) =>
      h(
        "li",
        {},
        h(
          "a",
          {
            href: `#/prompts/${encodeURIComponent(p.id)}`,
            class: p.id === selected ? "active" : "",
            dataset: { id: p.id },
          },
          p.name,
          h("span", {
            class: "sub",
            text: `${p.agent} · ${p.current_version_number ? `version ${p.current_version_number}` : "default"}`,
          }),
        ),
      ),
    ),
  );
}

async function detail(id, signal, reload) {
  const [prompt, fallback] = await Promise.all([
    api(`/api/prompts/${encodeURIComponent(id)}`, { signal }),
    api(`/api/prompts/${encodeURIComponent(id)}/default`, { signal }),
  ]);
  const base = `/api/prompts/${encodeURIComponent(id)}`;
  const active = prompt.versions.find((v) => v.id === prompt.current_version_id) || null;
  const activeText = active
    ? (await api(`${base}/versions/${active.id}`, { signal })).content
    : fallback.content;
  const problem = errorBox();

  // The left pane shows the active text, or a version picked from the list.
  const leftTitle = h("h3", {
    text: active ? `Current: version ${active.version_number}` : "Current: the default",
  });
  const leftText = h("pre", { class: "prompt-text current-text", text: activeText });
  async function show(version) {
    const full = await api(`${base}/versions/${version.id}`, { signal });
    leftTitle.textContent = `Version ${full.version_number}${version.id === prompt.current_version_id ? " (current)" : ""}`;
    leftText.textContent = full.content;
  }

  const content = h("textarea", { name: "content", rows: 12, text: activeText });
  const note = h("input", {
    name: "change_note",
    placeholder: "What changed (optional)",
    style: "flex:1",
  });
  const save = h("button", { type: "submit", class: "primary", text: "Save as new version" });
  const form = h(
    "form",
    {
      class: "new-version",
      onsubmit: async (event) => {
        event.preventDefault();
        showError(problem, null);
        try {
          const body = { content: content.value, change_note: note.value.trim() || null };
          const created = await busy(save, () =>
            api(`${base}/versions`, { method: "POST", body, signal }),
          );
          toast(`Version ${created.version_number} is now in use`);
          await reload();
        } catch (error) {
          if (error instanceof ApiError) showError(problem, error);
          else throw error;
        }
      },
    },
    content,
    h("div", { class: "row", style: "margin-top:8px" }, note, save),
  );

  const reset = h("button", {
    class: "reset",
    text: "Reset to default",
    disabled: !prompt.current_version_id,
    onclick: async () => {
      showError(problem, null);
      try {
        await busy(reset, () => api(`${base}/reset`, { method: "POST", signal }));
        toast(`${prompt.name} uses its default again`);
        await reload();
      } catch (error) {
        if (error instanceof ApiError) showError(problem, error);
        else throw error;
      }
    },
  });

  const versions = prompt.versions.length
    ? h(
        "table",
        { class: "versions" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Version", "Created", "Note", ""].map((t) => h("th", { text: t })),
          ),
        ),
        h(
          "tbody",
          {},
          prompt.versions.map((v) =>
            h(
              "tr",
              { dataset: { id: v.id } },
              h(
                "td",
                {},
                `v${v.version_number} `,
                v.id === prompt.current_version_id
                  ? h("span", { class: "tag", text: "in use" })
                  : null,
              ),
              h("td", { text: fmtDateTime(v.created_at) }),
              h("td", { text: v.change_note || "" }),
              h(
                "td",
                {},
                h("button", {
                  class: "small",
                  text: "View",
                  onclick: () => show(v).catch((e) => showError(problem, e)),
                }),
              ),
            ),
          ),
        ),
      )
    : h("p", { class: "muted", text: "No custom versions: the default is in use." });

  return [
    panel(
      null,
      h(
        "div",
        { class: "page-head" },
        h(
          "div",
          { class: "grow" },
          h("h2", { text: prompt.name, style: "margin:0" }),
          h("div", { class: "muted", text: `${prompt.agent} · ${prompt.description || ""}` }),
        ),
        reset,
      ),
      problem,
      h(
        "div",
        { class: "grid-halves" },
        h("div", {}, leftTitle, leftText),
        h(
          "div",
          {},
          h("h3", { text: "Default" }),
          h("pre", { class: "prompt-text default-text", text: fallback.content }),
        ),
      ),
    ),
    panel("New version", form),
    panel("Versions", versions),
  ];
}

export async function render(view, { params, signal, navigate }) {
  document.title = "Prompts · Amelia";
  const { prompts } = await api("/api/prompts", { signal });
  if (!params[0] && prompts.length) {
    navigate(`/prompts/${prompts[0].id}`, {}, { replace: true });
    return undefined;
  }
  const selected = params[0];
  const side = panel(null, promptList(prompts, selected));
  const main = h("div", { class: "prompt-detail" });

  async function reload() {
    const { prompts: fresh } = await api("/api/prompts", { signal });
    replace(side, promptList(fresh, selected));
    replace(main, ...(await detail(selected, signal, reload)));
  }

  if (selected) replace(main, ...(await detail(selected, signal, reload)));
  else replace(main, panel(null, h("p", { class: "muted", text: "No prompts." })));
  replace(
    view,
    h("div", { class: "page-head" }, h("h1", { text: "Prompts" })),
    h("div", { class: "cols" }, side, main),
  );
  return undefined;
}
