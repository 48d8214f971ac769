// Evidence holds: the holds a person may see (GET /holds), placing one (POST /holds: approvers on any camera,
// officers on cameras a grant shows them), and the two-person release: one approver asks with a reason
// (release-request), a different approver confirms (release-confirm) or anyone entitled cancels the request
// (release-cancel). Who did what and when is on every row, because a hold is only as good as its paper trail.
// The server enforces every rule (a person confirming their own request gets hold_release_same_user in the banner);
// the buttons shown here only follow the capabilities GET /me gave.
import * as api from "../api.js";
import { add, t } from "../i18n.js";
import { hashQuery, go, route } from "../router.js";
import { button, bytes, form, h, localInputToIso, section, showNotice, timeCell } from "../ui.js";

add({
  en: {
    "nav.holds": "Holds",
    "holds.title": "Evidence holds",
    "holds.place": "Place a hold",
    "holds.place_hint": "A hold keeps the footage of its cameras and window from deletion until two approvers release it.",
    "holds.title_field": "Title",
    "holds.end_open": "End (leave empty: until released)",
    "holds.placed": "Hold {id} placed.",
    "holds.list": "Holds",
    "holds.filter_state": "State",
    "holds.filter_any": "any",
    "holds.filter": "Show",
    "holds.window": "Window",
    "holds.until_released": "until released",
    "holds.placed_by": "Placed",
    "holds.release": "Release",
    "holds.covered": "Covered",
    "holds.segments": "{n} segment(s), {bytes}",
    "holds.request_release": "Request release",
    "holds.release_reason": "Why release?",
    "holds.confirm_release": "Confirm release",
    "holds.cancel_release": "Cancel request",
    "holds.note": "Note (optional)",
    "holds.requested_by": "Release requested by {who}",
    "holds.released_by": "Released by {who}",
    "holds.state.active": "active",
    "holds.state.release_requested": "release requested",
    "holds.state.released": "released",
    "holds.requested_notice": "Release of hold {id} requested; a second approver must confirm it.",
    "holds.released_notice": "Hold {id} released.",
    "holds.cancelled_notice": "Release request of hold {id} cancelled; the hold is active again.",
    "holds.missing_files": "Some covered files could not be made read-only (the hold still protects them): {n}",
    "holds.no_cameras": "No camera is visible to you, so there is nothing to place a hold on.",
  },
  zh: {
    "nav.holds": "证据保全",
    "holds.title": "证据保全",
    "holds.place": "设置保全",
    "holds.place_hint": "保全使所选摄像机在该时段内的录像不被删除，直至两名审批人解除。",
    "holds.title_field": "标题",
    "holds.end_open": "结束（留空：直至解除）",
    "holds.placed": "已设置保全 {id}。",
    "holds.list": "保全列表",
    "holds.filter_state": "状态",
    "holds.filter_any": "全部",
    "holds.filter": "显示",
    "holds.window": "时段",
    "holds.until_released": "直至解除",
    "holds.placed_by": "设置",
    "holds.release": "解除",
    "holds.covered": "覆盖",
    "holds.segments": "{n} 个片段，{bytes}",
    "holds.request_release": "申请解除",
    "holds.release_reason": "解除理由",
    "holds.confirm_release": "确认解除",
    "holds.cancel_release": "撤销申请",
    "holds.note": "备注（可选）",
    "holds.requested_by": "{who} 申请解除",
    "holds.released_by": "{who} 已解除",
    "holds.state.active": "生效中",
    "holds.state.release_requested": "待确认解除",
    "holds.state.released": "已解除",
    "holds.requested_notice": "已申请解除保全 {id}，需另一名审批人确认。",
    "holds.released_notice": "保全 {id} 已解除。",
    "holds.cancelled_notice": "保全 {id} 的解除申请已撤销，保全继续生效。",
    "holds.missing_files": "部分覆盖文件未能设为只读（保全仍然有效）：{n}",
    "holds.no_cameras": "您看不到任何摄像机，因此无法设置保全。",
  },
});

const STATES = ["active", "release_requested", "released"];

function can(me, capability) {
  return (me.capabilities || []).includes(capability);
}

// "who, when" with the UTC time on hover; empty when nobody did it.
function byAt(who, when) {
  if (!who && !when) return "";
  return h("span", {}, `${who || "—"}, `, timeCell(when));
}

function windowCell(hold) {
  return h("span", {}, timeCell(hold.start), " → ", hold.end ? timeCell(hold.end) : t("holds.until_released"));
}

function coveredCell(hold) {
  return h(
    "ul",
    { class: "plain" },
    (hold.covered || []).map((c) =>
      h("li", {}, `${c.camera_id}: `, t("holds.segments", { n: c.segments, bytes: bytes(c.bytes) })),
    ),
  );
}

function releaseCell(hold) {
  const lines = [];
  if (hold.release_requested_by) {
    lines.push(
      h("div", { class: "release-requested" }, t("holds.requested_by", { who: hold.release_requested_by }), " ", timeCell(hold.release_requested_at)),
      h("div", { class: "muted" }, `${t("common.reason")}: ${hold.release_reason || "—"}`),
    );
  }
  if (hold.released_by) {
    lines.push(h("div", { class: "released" }, t("holds.released_by", { who: hold.released_by }), " ", timeCell(hold.released_at)));
  }
  return lines;
}

// The release step this person may take on this hold now (the server decides whether it succeeds).
function actionsCell(hold, me, refresh) {
  if (!can(me, "holds.release")) return "";
  const post = async (step, body, notice) => {
    await api.post(`/holds/${hold.id}/${step}`, body);
    await refresh();
    showNotice(t(notice, { id: hold.id }));
  };
  if (hold.state === "active") {
    return form(
      [{ name: "reason", label: t("holds.release_reason"), required: true }],
      (v) => post("release-request", { reason: v.reason }, "holds.requested_notice"),
      t("holds.request_release"),
      { class: "inline release-request", dataset: { hold: hold.id } },
    );
  }
  if (hold.state === "release_requested") {
    return h(
      "div",
      { class: "inline" },
      form(
        [{ name: "reason", label: t("holds.note") }],
        (v) => post("release-confirm", v.reason ? { reason: v.reason } : {}, "holds.released_notice"),
        t("holds.confirm_release"),
        { class: "inline release-confirm", dataset: { hold: hold.id } },
      ),
      button(t("holds.cancel_release"), () => post("release-cancel", {}, "holds.cancelled_notice"), {
        class: "secondary release-cancel",
        dataset: { hold: hold.id },
      }),
    );
  }
  return "";
}

function holdsTable(holds, me, refresh) {
  if (!holds.length) return h("p", { class: "empty" }, t("common.none"));
  const head = ["#", t("common.case_ref"), t("common.cameras"), t("holds.window"), t("common.state"), t("holds.placed_by"), t("holds.release"), t("holds.covered"), t("common.actions")];
  return h(
    "table",
    { id: "holds-table" },
    h("thead", {}, h("tr", {}, head.map((x) => h("th", {}, x)))),
    h(
      "tbody",
      {},
      holds.map((hold) =>
        h(
          "tr",
          { dataset: { hold: hold.id, state: hold.state } },
          h("td", {}, String(hold.id)),
          h("td", {}, h("strong", {}, hold.case_ref), h("div", {}, hold.title), h("div", { class: "muted" }, hold.reason)),
          h("td", {}, (hold.cameras || []).join(", ")),
          h("td", {}, windowCell(hold)),
          h("td", { class: `state-${hold.state} hold-state` }, t(`holds.state.${hold.state}`)),
          h("td", {}, byAt(hold.placed_by, hold.placed_at)),
          h("td", {}, releaseCell(hold)),
          h("td", {}, coveredCell(hold)),
          h("td", {}, actionsCell(hold, me, refresh)),
        ),
      ),
    ),
  );
}

async function placeSection(me, refresh) {
  const cams = (await api.get("/cameras")).cameras || [];
  if (!cams.length) return section(t("holds.place"), h("p", { class: "empty" }, t("holds.no_cameras")));
  return section(
    t("holds.place"),
    h("p", { class: "muted" }, t("holds.place_hint")),
    form(
      [
        { name: "case_ref", label: t("common.case_ref"), required: true },
        { name: "title", label: t("holds.title_field"), required: true },
        { name: "reason", label: t("common.reason"), type: "textarea", required: true },
        { name: "cameras", label: t("common.cameras"), type: "checkboxes", options: cams.map((c) => [c.id, `${c.id} · ${c.name}`]) },
        { name: "start", label: t("common.start"), type: "datetime-local", required: true },
        { name: "end", label: t("holds.end_open"), type: "datetime-local" },
      ],
      async (v) => {
        const body = {
          case_ref: v.case_ref,
          title: v.title,
          reason: v.reason,
          cameras: v.cameras,
          start: localInputToIso(v.start),
        };
        if (v.end) body.end = localInputToIso(v.end);
        const placed = await api.post("/holds", body);
        await refresh();
        const missing = (placed.missing_files || []).length;
        showNotice(t("holds.placed", { id: placed.id }) + (missing ? ` ${t("holds.missing_files", { n: missing })}` : ""));
      },
      t("holds.place"),
      { id: "hold-form" },
    ),
  );
}

route("/holds", {
  nav: { key: "nav.holds" },
  roles: ["approver", "officer", "operator", "viewer", "auditor", "admin"],
  async render(main, _params, me, isCurrent) {
    const q = hashQuery();
    const state = q.get("state") || "";
    main.append(h("h1", {}, t("holds.title")));
    const listBox = h("div", { id: "holds-list" });
    const refresh = async () => {
      const out = await api.get("/holds", { state });
      if (!isCurrent()) return;
      listBox.replaceChildren(holdsTable(out.holds || [], me, refresh));
    };
    if (can(me, "holds.place")) main.append(await placeSection(me, refresh));
    const filter = form(
      [
        {
          name: "state",
          label: t("holds.filter_state"),
          type: "select",
          value: state,
          options: [["", t("holds.filter_any")], ...STATES.map((s) => [s, t(`holds.state.${s}`)])],
        },
      ],
      (v) => go(v.state ? `/holds?state=${encodeURIComponent(v.state)}` : "/holds"),
      t("holds.filter"),
      { id: "holds-filter", class: "inline" },
    );
    main.append(section(t("holds.list"), filter, listBox));
    await refresh();
  },
});
