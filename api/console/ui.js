// Small DOM helpers shared by the views: element building (text is always set as text, never as HTML), tables,
// forms, the error banner, and times (shown in the browser's zone and in UTC; sent to the API as ISO 8601 UTC).
import { t } from "./i18n.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// The banner at the top shows every failure: the API's code and message, exactly as the server said them.
export function showError(err) {
  const banner = document.getElementById("banner");
  if (!banner) return;
  const code = err && err.code ? `${err.code}: ` : "";
  const message = (err && (err.message || String(err))) || t("app.error");
  clear(banner);
  banner.className = "error";
  banner.append(
    h("span", { class: "error-text", "data-code": (err && err.code) || "" }, `${t("app.error")} — ${code}${message}`),
    h("button", { type: "button", class: "link", onclick: () => (banner.hidden = true) }, t("app.dismiss")),
  );
  banner.hidden = false;
}

export function showNotice(message) {
  const banner = document.getElementById("banner");
  if (!banner) return;
  clear(banner);
  banner.className = "notice";
  banner.append(h("span", {}, message));
  banner.hidden = false;
}

export function hideBanner() {
  const banner = document.getElementById("banner");
  if (banner) banner.hidden = true;
}

// Run an async action, showing its failure in the banner; returns its result or undefined.
export async function guarded(fn) {
  try {
    return await fn();
  } catch (e) {
    showError(e);
    return undefined;
  }
}

// A table: columns [{label, value: row => text|Node}], rows. Empty → a "nothing here" line.
export function table(columns, rows, attrs = {}) {
  if (!rows || rows.length === 0) return h("p", { class: "empty" }, t("common.none"));
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.label)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", {}, c.value(r)))))),
  );
}

// A form: fields [{name, label, type?, value?, required?, options?: [[value, label]], placeholder?}] and a
// submit handler that receives {name: value}. The button is disabled while the handler runs.
export function form(fields, onsubmit, submitLabel = t("common.submit"), attrs = {}) {
  const inputs = {};
  const rows = fields.map((f) => {
    let input;
    if (f.type === "select") {
      input = h("select", { name: f.name, id: `f-${f.name}` }, (f.options || []).map(([v, l]) => h("option", { value: v }, l)));
      if (f.value !== undefined) input.value = f.value;
    } else if (f.type === "textarea") {
      input = h("textarea", { name: f.name, id: `f-${f.name}`, required: f.required, placeholder: f.placeholder });
      if (f.value !== undefined) input.value = f.value;
    } else if (f.type === "checkboxes") {
      input = h(
        "span",
        { class: "checks", id: `f-${f.name}` },
        (f.options || []).map(([v, l]) =>
          h("label", {}, h("input", { type: "checkbox", name: f.name, value: v, checked: (f.value || []).includes(v) }), l),
        ),
      );
    } else {
      input = h("input", {
        name: f.name,
        id: `f-${f.name}`,
        type: f.type || "text",
        required: f.required,
        placeholder: f.placeholder,
        value: f.value,
        autocomplete: f.autocomplete,
      });
    }
    inputs[f.name] = input;
    return h("label", { class: "field", for: `f-${f.name}` }, h("span", {}, f.label), input);
  });
  const button = h("button", { type: "submit" }, submitLabel);
  const el = h("form", attrs, rows, button);
  el.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = {};
    for (const [name, input] of Object.entries(inputs)) {
      if (input.classList && input.classList.contains("checks")) {
        values[name] = [...input.querySelectorAll("input:checked")].map((i) => i.value);
      } else values[name] = input.value;
    }
    button.disabled = true;
    try {
      await guarded(() => onsubmit(values));
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

export function button(label, onclick, attrs = {}) {
  return h(
    "button",
    {
      type: "button",
      ...attrs,
      onclick: async (ev) => {
        const b = ev.currentTarget;
        b.disabled = true;
        try {
          await guarded(() => onclick(ev));
        } finally {
          b.disabled = false;
        }
      },
    },
    label,
  );
}

// --- time ------------------------------------------------------------------------------------------------------
export function parseTime(iso) {
  return iso ? new Date(iso) : null;
}

// "2026-12-03 14:05:07" in the browser's zone; the UTC value in the title (hover) for evidence work.
export function fmtTime(iso) {
  const d = parseTime(iso);
  if (!d || Number.isNaN(d.getTime())) return iso || "—";
  const pad = (n) => String(n).padStart(2, "0");
  const local = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return local;
}

export function timeCell(iso) {
  return h("time", { datetime: iso || "", title: iso ? `${iso} (UTC)` : "" }, fmtTime(iso));
}

export function toIso(date) {
  return new Date(date).toISOString().replace(/\.\d{3}Z$/, "Z");
}

// The value of <input type="datetime-local"> (local time) as ISO 8601 UTC, and back.
export function localInputToIso(value) {
  return value ? toIso(new Date(value)) : "";
}

export function isoToLocalInput(iso) {
  const d = parseTime(iso);
  if (!d) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function section(title, ...children) {
  return h("section", {}, h("h2", {}, title), ...children);
}
