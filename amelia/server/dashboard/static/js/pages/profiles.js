// Profiles: list, create, edit (agents included), activate, delete.

import { api, ApiError } from "../api.js";
import { busy, errorBox, h, panel, replace, showError, toast } from "../dom.js";
import { refreshHeader } from "../header.js";

const TRACKERS = ["noop", "github", "jira"];
const DRIVERS = ["api", "cli"];
const AGENT_NAMES = ["architect", "developer", "reviewer", "evaluator", "brainstormer"];
const EMPTY = {
  id: "",
  tracker: "noop",
  working_dir: "",
  plan_output_dir: "docs/plans",
  plan_path_pattern: "docs/plans/{date}-{issue_key}.md",
  agents: { developer: { driver: "api", model: "", options: {} } },
};

function agentRow(name, agent) {
  const options = Object.keys(agent.options || {}).length ? JSON.stringify(agent.options) : "";
  const row = h(
    "div",
    { class: "agent-row" },
    h("input", {
      class: "agent-name",
      placeholder: "agent",
      value: name,
      list: "agent-names",
      "aria-label": "Agent name",
    }),
    h(
      "select",
      { class: "agent-driver", "aria-label": "Driver" },
      DRIVERS.map((d) => h("option", { value: d, text: d })),
    ),
    h("input", {
      class: "agent-model",
      placeholder: "model",
      value: agent.model || "",
      "aria-label": "Model",
    }),
    h("textarea", {
      class: "agent-options",
      placeholder: '{"base_url": "…"} (JSON options)',
      "aria-label": "Options (JSON)",
      text: options,
    }),
    h("button", { type: "button", class: "small", text: "Remove", onclick: () => row.remove() }),
  );
  row.querySelector(".agent-driver").value = agent.driver || "api";
  return row;
}

/** The create/edit form; `onSaved` runs after the server accepted it. */
function profileForm(profile, editing, onSaved, onCancel) {
  const problem = errorBox();
  const inputs = {};
  const field = (name, label, control) => {
    inputs[name] = control;
    return h(
      "div",
      { class: "field", dataset: { field: name } },
      h("label", { text: label }),
      control,
    );
  };
  const tracker = h(
    "select",
    { name: "tracker" },
    TRACKERS.map((t) => h("option", { value: t, text: t })),
  );
  tracker.value = profile.tracker;
  const agents = h("div", { class: "agents" });
  for (const [name, agent] of Object.entries(profile.agents)) agents.append(agentRow(name, agent));

  function body() {
    const result = {
      tracker: tracker.value,
      working_dir: inputs.working_dir.value.trim(),
      plan_output_dir: inputs.plan_output_dir.value.trim(),
      plan_path_pattern: inputs.plan_path_pattern.value.trim(),
      agents: {},
    };
    for (const row of agents.querySelectorAll(".agent-row")) {
      const name = row.querySelector(".agent-name").value.trim();
      if (!name) throw new Error("Every agent needs a name.");
      const text = row.querySelector(".agent-options").value.trim();
      let options = {};
      if (text) {
        try {
          options = JSON.parse(text);
        } catch {
          throw new Error(`The options of agent "${name}" are not valid JSON.`);
        }
      }
      result.agents[name] = {
        driver: row.querySelector(".agent-driver").value,
        model: row.querySelector(".agent-model").value.trim(),
        options,
      };
    }
    if (!editing) result.id = inputs.id.value.trim();
    return result;
  }

  const save = h("button", {
    type: "submit",
    class: "primary",
    text: editing ? "Save profile" : "Create profile",
  });
  return h(
    "form",
    {
      class: "profile-form",
      novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        showError(problem, null);
        try {
          const payload = body();
          const saved = await busy(save, () =>
            editing
              ? api(`/api/profiles/${encodeURIComponent(profile.id)}`, {
                  method: "PUT",
                  body: payload,
                })
              : api("/api/profiles", { method: "POST", body: payload }),
          );
          toast(editing ? `Profile ${saved.id} saved` : `Profile ${saved.id} created`);
          onSaved(saved);
        } catch (error) {
          if (error instanceof ApiError || !(error instanceof TypeError)) showError(problem, error);
          else throw error;
        }
      },
    },
    h("h2", { text: editing ? `Edit profile ${profile.id}` : "New profile" }),
    h(
      "div",
      { class: "form-grid" },
      editing
        ? null
        : field(
            "id",
            "Name",
            h("input", { name: "id", placeholder: "lowercase-name", value: profile.id }),
          ),
      field("tracker", "Tracker", tracker),
      field(
        "working_dir",
        "Working directory",
        h("input", {
          name: "working_dir",
          placeholder: "/path/to/repo",
          value: profile.working_dir,
        }),
      ),
      field(
        "plan_output_dir",
        "Plan directory",
        h("input", { name: "plan_output_dir", value: profile.plan_output_dir }),
      ),
      field(
        "plan_path_pattern",
        "Plan path pattern",
        h("input", { name: "plan_path_pattern", value: profile.plan_path_pattern }),
      ),
    ),
    h("h3", { text: "Agents" }),
    h(
      "datalist",
      { id: "agent-names" },
      AGENT_NAMES.map((n) => h("option", { value: n })),
    ),
    agents,
    h("button", {
      type: "button",
      class: "small",
      text: "+ Add agent",
      onclick: () => agents.append(agentRow("", { driver: "api", model: "" })),
    }),
    problem,
    h(
      "div",
      { class: "actions", style: "margin-top:12px" },
      save,
      h("button", { type: "button", text: "Cancel", onclick: onCancel }),
    ),
  );
}

export async function render(view, { signal }) {
  document.title = "Profiles · Amelia";
  const editor = h("div");
  const listBox = h("div");
  const problem = errorBox();

  async function load() {
    const profiles = await api("/api/profiles", { signal });
    replace(listBox, table(profiles));
  }

  async function act(button, request, done) {
    showError(problem, null);
    try {
      await busy(button, request);
      toast(done);
      await Promise.all([load(), refreshHeader()]);
    } catch (error) {
      if (error instanceof ApiError) showError(problem, error);
      else throw error;
    }
  }

  function openEditor(profile, editing) {
    const close = () => replace(editor);
    replace(
      editor,
      panel(
        null,
        profileForm(
          profile,
          editing,
          async () => {
            close();
            await Promise.all([load(), refreshHeader()]);
          },
          close,
        ),
      ),
    );
    editor.scrollIntoView({ block: "nearest" });
  }

  function deleteButton(profile) {
    // Two clicks instead of a browser dialog: "Delete", then "Really delete?".
    const button = h("button", { class: "danger small", text: "Delete" });
    button.addEventListener("click", () => {
      if (!button.classList.contains("confirm")) {
        button.classList.add("confirm");
        button.textContent = "Really delete?";
        setTimeout(() => {
          button.classList.remove("confirm");
          button.textContent = "Delete";
        }, 4000);
        return;
      }
      const path = `/api/profiles/${encodeURIComponent(profile.id)}`;
      act(button, () => api(path, { method: "DELETE" }), `Profile ${profile.id} deleted`);
    });
    return button;
  }

  function table(profiles) {
    if (!profiles.length)
      return h("p", { class: "muted", text: "No profiles yet: create one to run workflows." });
    return h(
      "table",
      { class: "profiles" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Name", "Tracker", "Working directory", "Agents", ""].map((t) => h("th", { text: t })),
        ),
      ),
      h(
        "tbody",
        {},
        profiles.map((p) =>
          h(
            "tr",
            { dataset: { id: p.id } },
            h(
              "td",
              {},
              h("strong", { text: p.id }),
              " ",
              p.is_active ? h("span", { class: "tag", text: "active" }) : null,
            ),
            h("td", { text: p.tracker }),
            h("td", { class: "mono truncate", title: p.working_dir, text: p.working_dir }),
            h(
              "td",
              {},
              Object.entries(p.agents).map(([name, a]) =>
                h("div", { class: "mono", text: `${name}: ${a.driver} · ${a.model}` }),
              ),
            ),
            h(
              "td",
              {},
              h(
                "div",
                { class: "actions" },
                p.is_active
                  ? null
                  : h("button", {
                      class: "small activate",
                      text: "Activate",
                      onclick: (e) =>
                        act(
                          e.currentTarget,
                          () =>
                            api(`/api/profiles/${encodeURIComponent(p.id)}/activate`, {
                              method: "POST",
                            }),
                          `Profile ${p.id} is active`,
                        ),
                    }),
                h("button", {
                  class: "small edit",
                  text: "Edit",
                  onclick: () => openEditor(p, true),
                }),
                deleteButton(p),
              ),
            ),
          ),
        ),
      ),
    );
  }

  await load();
  replace(
    view,
    h(
      "div",
      { class: "page-head" },
      h("h1", { text: "Profiles" }),
      h("span", { class: "grow" }),
      h("button", {
        class: "primary new-profile",
        text: "New profile",
        onclick: () => openEditor(structuredClone(EMPTY), false),
      }),
    ),
    editor,
    panel(null, problem, listBox),
  );
  return undefined;
}
