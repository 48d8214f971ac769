// Approvers: the queues of pending access requests and export requests (approve or reject, always with a reason,
// which the audit trail keeps), and the grants they issue, suspend, resume and revoke. The server applies every
// rule (share classes, units, separation of duties); the screens show its refusals as they come.
import * as api from "../api.js";
import { add, t } from "../i18n.js";
import { route } from "../router.js";
import { button, clear, form, h, localInputToIso, section, showNotice, table, timeCell } from "../ui.js";
import { minuteInput, personName, stateCell, windowText } from "./officer.js";

const DAY_MS = 24 * 3600_000;

add({
  en: {
    "nav.approvals": "Approvals",
    "nav.grants": "Grants",
    "approvals.title": "Waiting for a decision",
    "approvals.access": "Access requests",
    "approvals.exports": "Export requests",
    "approvals.requester": "Requester",
    "approvals.reason_needed": "Give a reason for the decision: it is kept in the audit trail.",
    "approvals.approved": "Request #{id} approved: grant #{grant} issued.",
    "approvals.rejected": "Request #{id} rejected.",
    "approvals.export_decided": "Export request #{id} is now {state}.",
    "approvals.units": "Owning units",
    "approvals.legal_basis": "Legal basis",
    "approvals.recipient": "Recipient",
    "approvals.destination": "Destination",
    "approvals.valid_until": "Valid until",
    "grants.title": "Grants",
    "grants.issue": "Issue a grant",
    "grants.user_id": "User id",
    "grants.actions": "Actions",
    "grants.last_days": "Window: last N days (leave empty for the dates below)",
    "grants.window_start": "Footage from",
    "grants.window_end": "Footage until",
    "grants.valid_until": "Valid until (at most one year)",
    "grants.max_streams": "Concurrent streams (1–16)",
    "grants.issued": "Grant #{id} issued.",
    "grants.list": "All grants",
    "grants.user": "User",
    "grants.window": "Window",
    "grants.suspend": "Suspend",
    "grants.resume": "Resume",
    "grants.revoke": "Revoke",
    "grants.changed": "Grant #{id} is now {state}.",
    "grants.state_reason": "Reason",
    "grants.no_cameras": "Choose at least one camera.",
  },
  zh: {
    "nav.approvals": "审批",
    "nav.grants": "授权",
    "approvals.title": "待决定事项",
    "approvals.access": "调阅申请",
    "approvals.exports": "导出申请",
    "approvals.requester": "申请人",
    "approvals.reason_needed": "请填写决定理由，该理由将记入审计日志。",
    "approvals.approved": "申请 #{id} 已批准，已签发授权 #{grant}。",
    "approvals.rejected": "申请 #{id} 已驳回。",
    "approvals.export_decided": "导出申请 #{id} 当前状态：{state}。",
    "approvals.units": "所属单位",
    "approvals.legal_basis": "法律依据",
    "approvals.recipient": "接收方",
    "approvals.destination": "去向",
    "approvals.valid_until": "有效期至",
    "grants.title": "授权",
    "grants.issue": "签发授权",
    "grants.user_id": "用户编号",
    "grants.actions": "操作",
    "grants.last_days": "录像时段：最近 N 天（留空则使用下方日期）",
    "grants.window_start": "录像起始",
    "grants.window_end": "录像截止",
    "grants.valid_until": "有效期至（最长一年）",
    "grants.max_streams": "并发流数（1–16）",
    "grants.issued": "授权 #{id} 已签发。",
    "grants.list": "全部授权",
    "grants.user": "用户",
    "grants.window": "录像时段",
    "grants.suspend": "暂停",
    "grants.resume": "恢复",
    "grants.revoke": "撤销",
    "grants.changed": "授权 #{id} 当前状态：{state}。",
    "grants.state_reason": "理由",
    "grants.no_cameras": "请至少选择一个摄像机。",
  },
});

// A reason box and two buttons: the decision is sent only with a reason, so the audit trail always says why.
function decision(id, onApprove, onReject) {
  const reason = h("input", { class: "reason", placeholder: t("common.reason"), "aria-label": t("common.reason") });
  const needReason = () => {
    const r = reason.value.trim();
    if (!r) {
      reason.focus();
      throw new api.ApiError(0, "reason_required", t("approvals.reason_needed"));
    }
    return r;
  };
  return h(
    "span",
    { class: "decision", dataset: { id: String(id) } },
    reason,
    button(t("common.approve"), () => onApprove(needReason()), { class: "approve" }),
    button(t("common.reject"), () => onReject(needReason()), { class: "danger reject" }),
  );
}

route("/approvals", {
  nav: { key: "nav.approvals" },
  roles: ["approver"],
  async render(main, params, me, isCurrent) {
    const access = h("div", { id: "access-queue" });
    const exportsBox = h("div", { id: "export-queue" });

    async function refresh() {
      const [reqs, xs] = await Promise.all([api.get("/access-requests", { state: "pending" }), api.get("/exports", { state: "pending_approval" })]);
      if (!isCurrent()) return;
      clear(access).append(
        table(
          [
            { label: "#", value: (r) => String(r.id) },
            { label: t("approvals.requester"), value: (r) => `#${r.requester_id}` },
            { label: t("common.cameras"), value: (r) => r.cameras.join(", ") },
            { label: t("grants.actions"), value: (r) => r.actions.join(", ") },
            { label: t("grants.window"), value: (r) => windowText(r.window) },
            { label: t("approvals.valid_until"), value: (r) => timeCell(r.valid_until) },
            { label: t("common.purpose"), value: (r) => r.purpose },
            { label: t("common.case_ref"), value: (r) => r.case_ref },
            {
              label: t("common.actions"),
              value: (r) =>
                decision(
                  r.id,
                  async (reason) => {
                    const out = await api.post(`/access-requests/${r.id}/approve`, { reason });
                    showNotice(t("approvals.approved", { id: r.id, grant: out.grant.id }));
                    await refresh();
                  },
                  async (reason) => {
                    await api.post(`/access-requests/${r.id}/reject`, { reason });
                    showNotice(t("approvals.rejected", { id: r.id }));
                    await refresh();
                  },
                ),
            },
          ],
          reqs.requests,
          { id: "access-table" },
        ),
      );
      clear(exportsBox).append(
        table(
          [
            { label: "#", value: (x) => String(x.id) },
            { label: t("approvals.requester"), value: (x) => personName(x.requester) },
            { label: t("exports.cosigner"), value: (x) => personName(x.cosigner) },
            { label: t("common.cameras"), value: (x) => x.cameras.join(", ") },
            { label: t("grants.window"), value: (x) => windowText(x.window) },
            { label: t("common.purpose"), value: (x) => x.purpose },
            { label: t("common.case_ref"), value: (x) => x.case_ref },
            { label: t("approvals.legal_basis"), value: (x) => x.legal_basis },
            { label: t("approvals.recipient"), value: (x) => x.recipient },
            { label: t("approvals.destination"), value: (x) => x.destination },
            { label: t("approvals.units"), value: (x) => (x.owning_units || []).join(", ") },
            {
              label: t("exports.decisions"),
              value: (x) => (x.decisions || []).map((d) => h("div", {}, `${d.unit}: ${d.decision} — ${d.reason}`)),
            },
            {
              label: t("common.actions"),
              value: (x) =>
                decision(
                  x.id,
                  async (reason) => {
                    const out = await api.post(`/exports/${x.id}/approve`, { reason });
                    showNotice(t("approvals.export_decided", { id: x.id, state: out.state }));
                    await refresh();
                  },
                  async (reason) => {
                    const out = await api.post(`/exports/${x.id}/reject`, { reason });
                    showNotice(t("approvals.export_decided", { id: x.id, state: out.state }));
                    await refresh();
                  },
                ),
            },
          ],
          xs.exports,
          { id: "export-approval-table" },
        ),
      );
    }

    main.append(
      h("h1", {}, t("approvals.title")),
      h("div", { class: "row" }, button(t("common.refresh"), () => refresh(), { class: "secondary", id: "approvals-refresh" })),
      section(t("approvals.access"), access),
      section(t("approvals.exports"), exportsBox),
    );
    await refresh();
  },
});

function grantActions(g, refresh) {
  const reason = h("input", { class: "reason", placeholder: t("common.reason"), "aria-label": t("common.reason") });
  const change = (path, label, cls) =>
    button(label, async () => {
      const out = await api.post(`/grants/${g.id}/${path}`, { reason: reason.value.trim() || null });
      showNotice(t("grants.changed", { id: g.id, state: out.state }));
      await refresh();
    }, { class: cls });
  const buttons = [];
  if (g.state === "active") buttons.push(change("suspend", t("grants.suspend"), "secondary suspend"));
  if (g.state === "suspended") buttons.push(change("resume", t("grants.resume"), "secondary resume"));
  if (g.state === "active" || g.state === "suspended") buttons.push(change("revoke", t("grants.revoke"), "danger revoke"));
  if (!buttons.length) return "";
  return h("span", { class: "grant-actions", dataset: { id: String(g.id) } }, reason, buttons);
}

route("/grants", {
  nav: { key: "nav.grants" },
  roles: ["approver"],
  async render(main, params, me, isCurrent) {
    const list = h("div", { id: "grants" });
    const cams = await api.get("/cameras");
    if (!isCurrent()) return;

    async function refresh() {
      const out = await api.get("/grants");
      if (!isCurrent()) return;
      const gs = out.grants.slice().sort((a, b) => b.id - a.id);
      clear(list).append(
        table(
          [
            { label: "#", value: (g) => String(g.id) },
            { label: t("grants.user"), value: (g) => `#${g.user_id}` },
            { label: t("common.cameras"), value: (g) => g.cameras.join(", ") },
            { label: t("grants.actions"), value: (g) => g.actions.join(", ") },
            { label: t("grants.window"), value: (g) => windowText(g.window) },
            { label: t("approvals.valid_until"), value: (g) => timeCell(g.valid_until) },
            { label: t("common.purpose"), value: (g) => g.purpose },
            { label: t("common.case_ref"), value: (g) => g.case_ref },
            { label: t("grants.max_streams"), value: (g) => String(g.max_streams) },
            { label: t("common.state"), value: (g) => [stateCell(g.state), g.state_reason ? h("div", { class: "muted" }, g.state_reason) : ""] },
            { label: t("common.actions"), value: (g) => grantActions(g, refresh) },
          ],
          gs,
          { id: "grants-table" },
        ),
      );
      list.querySelectorAll("tbody tr").forEach((tr, i) => (tr.dataset.grant = String(gs[i].id)));
    }

    const now = Date.now();
    main.append(
      h("h1", {}, t("grants.title")),
      section(
        t("grants.issue"),
        form(
          [
            { name: "user_id", label: t("grants.user_id"), type: "number", required: true },
            { name: "cameras", label: t("common.cameras"), type: "checkboxes", options: cams.cameras.map((c) => [c.id, `${c.id} · ${c.name}`]) },
            { name: "actions", label: t("grants.actions"), type: "checkboxes", options: ["live", "playback", "export"].map((a) => [a, a]), value: ["playback"] },
            { name: "last_days", label: t("grants.last_days"), type: "number" },
            { name: "start", label: t("grants.window_start"), type: "datetime-local", value: minuteInput(now - 7 * DAY_MS) },
            { name: "end", label: t("grants.window_end"), type: "datetime-local", value: minuteInput(now + DAY_MS) },
            { name: "valid_until", label: t("grants.valid_until"), type: "datetime-local", required: true, value: minuteInput(now + 30 * DAY_MS) },
            { name: "purpose", label: t("common.purpose"), type: "textarea", required: true },
            { name: "case_ref", label: t("common.case_ref"), required: true },
            { name: "max_streams", label: t("grants.max_streams"), type: "number", value: "2" },
          ],
          async (v) => {
            const cameras = v.cameras.length ? v.cameras : [];
            if (!cameras.length) throw new api.ApiError(0, "cameras_required", t("grants.no_cameras"));
            const window = v.last_days ? { last_days: Number(v.last_days) } : { start: localInputToIso(v.start), end: localInputToIso(v.end) };
            const g = await api.post("/grants", {
              user_id: Number(v.user_id),
              cameras,
              actions: v.actions,
              window,
              valid_until: localInputToIso(v.valid_until),
              purpose: v.purpose,
              case_ref: v.case_ref,
              max_streams: Number(v.max_streams || 2),
            });
            showNotice(t("grants.issued", { id: g.id }));
            await refresh();
          },
          t("grants.issue"),
          { id: "grant-form" },
        ),
      ),
      section(t("grants.list"), list),
    );
    await refresh();
  },
});

