// Settings: the server settings, edited and saved; the server's validation errors shown in place.

import { api, ApiError } from "../api.js";
import { busy, errorBox, h, panel, replace, showError, toast } from "../dom.js";

// name, label, kind, hint. Checking the values is the server's job (PUT /api/settings answers
// 422 with the failing field); the form only turns text into numbers.
const FIELDS = [
  ["max_concurrent", "Concurrent workflows", "int", "How many workflows may run at once (1–100)."],
  [
    "log_retention_days",
    "Event log retention (days)",
    "int",
    "Events of finished workflows older than this are deleted (at least 1).",
  ],
  [
    "checkpoint_retention_days",
    "Checkpoint retention (days)",
    "int",
    "-1 keeps checkpoints, 0 deletes them when a workflow ends, N after N days.",
  ],
  [
    "workflow_start_timeout_seconds",
    "Workflow start timeout (s)",
    "float",
    "How long a start may take before it is reported as failed.",
  ],
  [
    "websocket_idle_timeout_seconds",
    "Live stream idle timeout (s)",
    "float",
    "A live connection that says nothing for this long is closed.",
  ],
  [
    "stream_tool_results",
    "Stream tool results",
    "bool",
    "Send agents' tool results to the live stream.",
  ],
];

export async function render(view, { signal }) {
  document.title = "Settings · Amelia";
  const current = await api("/api/settings", { signal });
  const inputs = {};
  const errors = {};
  const fields = {};
  const problem = errorBox();

  for (const [name, label, kind, hint] of FIELDS) {
    const id = `setting-${name}`;
    const input =
      kind === "bool"
        ? h("input", { id, name, type: "checkbox", checked: Boolean(current[name]) })
        : h("input", {
            id,
            name,
            type: "number",
            step: kind === "int" ? "1" : "any",
            value: String(current[name]),
          });
    inputs[name] = input;
    errors[name] = h("div", { class: "field-error", id: `${id}-error`, hidden: true });
    fields[name] = h(
      "div",
      { class: "field", dataset: { field: name } },
      kind === "bool"
        ? h("label", { for: id, class: "row" }, input, label)
        : [h("label", { for: id, text: label }), input],
      h("div", { class: "hint", text: hint }),
      errors[name],
    );
  }

  function clearErrors() {
    showError(problem, null);
    for (const name of Object.keys(errors)) {
      errors[name].hidden = true;
      fields[name].classList.remove("invalid");
    }
  }

  function fieldError(name, message) {
    errors[name].textContent = message;
    errors[name].hidden = false;
    fields[name].classList.add("invalid");
  }

  function values() {
    const body = {};
    for (const [name, , kind] of FIELDS) {
      const input = inputs[name];
      if (kind === "bool") body[name] = input.checked;
      else if (input.value.trim() === "") fieldError(name, "A value is required.");
      else body[name] = Number(input.value);
    }
    return body;
  }

  const save = h("button", { type: "submit", class: "primary", text: "Save settings" });
  const form = h(
    "form",
    {
      novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        clearErrors();
        const body = values();
        if (Object.values(fields).some((f) => f.classList.contains("invalid"))) return;
        try {
          const saved = await busy(save, () =>
            api("/api/settings", { method: "PUT", body, signal }),
          );
          for (const [name, , kind] of FIELDS) {
            if (kind === "bool") inputs[name].checked = saved[name];
            else inputs[name].value = String(saved[name]);
          }
          toast("Settings saved");
        } catch (error) {
          if (!(error instanceof ApiError)) throw error;
          let placed = false;
          for (const [name, message] of Object.entries(error.fields)) {
            const key = name.split(".")[0];
            if (key in fields) {
              fieldError(key, message);
              placed = true;
            }
          }
          if (!placed) showError(problem, error);
        }
      },
    },
    h(
      "div",
      { class: "form-grid" },
      FIELDS.map(([name]) => fields[name]),
    ),
    problem,
    h("div", { class: "actions" }, save),
  );

  replace(
    view,
    h("div", { class: "page-head" }, h("h1", { text: "Settings" })),
    panel(
      "Server",
      h("p", {
        class: "muted",
        text: "Stored in the database; changes apply to new work without a restart.",
      }),
      form,
    ),
  );
  return undefined;
}
