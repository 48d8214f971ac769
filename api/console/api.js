// The console's only way to the server: the public API under /api/v1, with the same grants and audit as any client.
//
// Authentication: a bearer token from POST /auth/login (kept in sessionStorage, so it ends with the tab), or the
// identity platform's session cookie (HttpOnly, set by /auth/oidc/callback). With the cookie, every request that
// changes something carries the X-NVR-CSRF header the server asks for.
export const BASE = "/api/v1";
const TOKEN_KEY = "nvr.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(method = "GET") {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  else if (!["GET", "HEAD", "OPTIONS"].includes(method)) headers["X-NVR-CSRF"] = "1";
  return headers;
}

function query(params) {
  if (!params) return "";
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// The error the server gave, as an ApiError: its stable code and its message (shown to the user as they are).
async function failure(resp) {
  let code = `http_${resp.status}`;
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    /* not JSON: keep the status line */
  }
  return new ApiError(resp.status, code, message);
}

// fetch() for the API: path under /api/v1, optional query params and JSON body. Returns the parsed JSON (or null
// for 204); throws ApiError for any answer that is not 2xx, and for a network failure.
export async function call(method, path, { params, body, raw = false, signal } = {}) {
  const headers = authHeaders(method);
  const init = { method, headers, credentials: "same-origin", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(BASE + path + query(params), init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network_error", String(e.message || e));
  }
  if (!resp.ok) throw await failure(resp);
  if (raw) return resp;
  if (resp.status === 204) return null;
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

export const get = (path, params, opts = {}) => call("GET", path, { ...opts, params });
export const post = (path, body, opts = {}) => call("POST", path, { ...opts, body });
export const patch = (path, body, opts = {}) => call("PATCH", path, { ...opts, body });
export const put = (path, body, opts = {}) => call("PUT", path, { ...opts, body });
export const del = (path, opts = {}) => call("DELETE", path, opts);

// A download the browser saves (an export copy, an audit CSV): fetched with the same authentication, then handed
// to the browser as a file. Errors are ApiErrors like any call.
export async function download(path, params, filename) {
  const resp = await call("GET", path, { params, raw: true });
  const blob = await resp.blob();
  const disposition = resp.headers.get("content-disposition") || "";
  const m = disposition.match(/filename="?([^";]+)"?/);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = (m && m[1]) || filename || "download";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  return { bytes: blob.size, name: a.download };
}
