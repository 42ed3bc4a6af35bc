// The header's right side: which profile new workflows use (from /api/config).

import { api } from "./api.js";
import { h, replace } from "./dom.js";

/** The header's active profile; refreshed when profiles change. */
export async function refreshHeader() {
  const el = document.getElementById("active-profile");
  if (!el) return;
  try {
    const config = await api("/api/config");
    const info = config.active_profile_info;
    replace(
      el,
      config.active_profile
        ? h(
            "a",
            { href: "#/profiles", title: info ? `${info.driver} · ${info.model}` : "" },
            "Profile: ",
            h("strong", { text: config.active_profile }),
          )
        : h("a", { href: "#/profiles", class: "warn", text: "No active profile" }),
    );
  } catch {
    replace(el, h("span", { class: "warn", text: "Server unreachable" }));
  }
}
