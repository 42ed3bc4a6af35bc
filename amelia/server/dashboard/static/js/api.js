// The dashboard's only way to the server's HTTP API: JSON in, JSON out, errors as ApiError.

/** A request the server refused: its status, a readable message, field errors by name. */
export class ApiError extends Error {
  constructor(status, message, fields = {}, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.fields = fields; // "max_concurrent" or "agents.developer.model" -> message
    this.code = code;
  }
}

// The API answers errors in three shapes: the envelope {error, code, details}, FastAPI's
// {detail: "..."} and the validation list {detail: [{loc, msg}]}.
function toError(status, body) {
  if (body && typeof body.error === "string") {
    return new ApiError(status, body.error, {}, body.code || null);
  }
  const detail = body && body.detail;
  if (typeof detail === "string") return new ApiError(status, detail);
  if (Array.isArray(detail)) {
    const fields = {};
    const lines = [];
    for (const item of detail) {
      const loc = (item.loc || []).filter((part) => part !== "body" && part !== "query");
      const name = loc.join(".");
      const msg = String(item.msg || "invalid").replace(/^Value error, /, "");
      if (name && !(name in fields)) fields[name] = msg;
      lines.push(name ? `${name}: ${msg}` : msg);
    }
    return new ApiError(status, lines.join("; ") || `Request failed (${status})`, fields);
  }
  return new ApiError(status, `Request failed (${status})`);
}

/**
 * Call the API. `options`: `method` (GET), `body` (sent as JSON), `query` (object; empty
 * values dropped), `signal` (AbortSignal: a page left mid-request aborts its fetches).
 * Resolves to the parsed JSON (null for 204); rejects with ApiError.
 */
export async function api(path, { method = "GET", body, query, signal } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(key, value);
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const init = { method, signal, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The server could not be reached. Is `amelia serve` running?");
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) throw toError(response.status, parsed);
  return parsed;
}

/** True for the error a fetch raises when its page was left (nothing to report). */
export function isAbort(error) {
  return error && error.name === "AbortError";
}
