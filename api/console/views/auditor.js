// The auditors' screens. "#/audit": the audit trail searched with every filter GET /audit offers (time range,
// user id, action, camera, outcome), a page at a time in sequence order (after_seq), and the same search as the
// API's CSV (format=csv, saved as a file). The filters live in the address (#/audit?action=…), so a search can be
// repeated or handed to a colleague. "#/integrity": the audit chain recomputed (GET /audit/verify), open integrity
// findings (GET /integrity/findings, resolved with a note by an auditor), the signed checkpoint chain
// (GET /checkpoints) and the signing keys (GET /keys), so an auditor can check the evidence without a shell.
import * as api from "../api.js";
import { add, t } from "../i18n.js";
import { go, hashQuery, route } from "../router.js";
import { button, form, h, isoToLocalInput, localInputToIso, section, showError, showNotice, table, timeCell } from "../ui.js";
import { alertsSection, label } from "./admin.js";

add({
  en: {
    "nav.audit": "Audit",
    "nav.integrity": "Integrity",
    "nav.alerts": "Alerts",
    "audit.title": "Audit trail",
    "audit.since": "From",
    "audit.until": "Until",
    "audit.actor_id": "User id",
    "audit.action": "Action",
    "audit.camera_id": "Camera id",
    "audit.outcome": "Outcome",
    "audit.any": "any",
    "audit.limit": "Per page",
    "audit.search": "Search",
    "audit.clear": "Clear",
    "audit.csv": "Export CSV",
    "audit.csv_hint": "The CSV holds every event of this search from its first page (at most {n}).",
    "audit.csv_done": "Saved {name} ({bytes} bytes).",
    "audit.page": "Events {first}–{last} ({n} on this page)",
    "audit.next": "Next page",
    "audit.first": "First page",
    "audit.seq": "Seq",
    "audit.at": "Time",
    "audit.actor": "Who",
    "audit.object": "Object",
    "audit.window": "Footage window",
    "audit.details": "Purpose / case / destination",
    "audit.reason": "Reason",
    "audit.client": "From",
    "audit.filter_user": "Only this user",
    "integrity.title": "Integrity",
    "integrity.chain": "Audit chain verification",
    "integrity.verify": "Verify again",
    "integrity.ok": "Intact: {n} event(s) checked, none edited, removed or reordered.",
    "integrity.bad": "BROKEN at event {seq} ({kind}): {detail} — {n} event(s) checked.",
    "integrity.checked_at": "Checked at {at}",
    "integrity.findings": "Open integrity findings",
    "integrity.kind": "Kind",
    "integrity.subject": "Subject",
    "integrity.detail": "Detail",
    "integrity.source": "Found by",
    "integrity.found": "Found",
    "integrity.intact_again": "Intact again",
    "integrity.resolve": "Resolve",
    "integrity.note": "Note",
    "integrity.resolved": "Finding {id} resolved.",
    "integrity.checkpoints": "Signed checkpoints",
    "integrity.checkpoints_hint": "The newest {n} of the chain; a witness copy for `nvr verify --against` comes from GET /api/v1/checkpoints.",
    "integrity.key": "Key",
    "integrity.hash": "Hash",
    "integrity.keys": "Signing keys",
    "integrity.suite": "Suite",
    "integrity.fingerprint": "Fingerprint (SHA-256)",
    "integrity.retired": "Retired",
    "integrity.active": "in use",
    "alerts.title": "Abnormal-use alerts",
  },
  zh: {
    "nav.audit": "审计",
    "nav.integrity": "完整性",
    "nav.alerts": "告警",
    "audit.title": "审计记录",
    "audit.since": "起始",
    "audit.until": "截止",
    "audit.actor_id": "用户编号",
    "audit.action": "操作",
    "audit.camera_id": "摄像机编号",
    "audit.outcome": "结果",
    "audit.any": "全部",
    "audit.limit": "每页条数",
    "audit.search": "查询",
    "audit.clear": "清除条件",
    "audit.csv": "导出 CSV",
    "audit.csv_hint": "CSV 包含本次查询从第一页起的全部事件（最多 {n} 条）。",
    "audit.csv_done": "已保存 {name}（{bytes} 字节）。",
    "audit.page": "事件 {first}–{last}（本页 {n} 条）",
    "audit.next": "下一页",
    "audit.first": "第一页",
    "audit.seq": "序号",
    "audit.at": "时间",
    "audit.actor": "操作人",
    "audit.object": "对象",
    "audit.window": "录像时段",
    "audit.details": "用途 / 案件 / 去向",
    "audit.reason": "原因",
    "audit.client": "来源",
    "audit.filter_user": "只看此用户",
    "integrity.title": "完整性",
    "integrity.chain": "审计链校验",
    "integrity.verify": "重新校验",
    "integrity.ok": "完好：已校验 {n} 条事件，无修改、删除或重排。",
    "integrity.bad": "已损坏：事件 {seq}（{kind}）：{detail}——已校验 {n} 条事件。",
    "integrity.checked_at": "校验时间 {at}",
    "integrity.findings": "未处理的完整性问题",
    "integrity.kind": "类型",
    "integrity.subject": "对象",
    "integrity.detail": "详情",
    "integrity.source": "发现方式",
    "integrity.found": "发现时间",
    "integrity.intact_again": "已恢复完好",
    "integrity.resolve": "处理完毕",
    "integrity.note": "备注",
    "integrity.resolved": "问题 {id} 已处理。",
    "integrity.checkpoints": "签名检查点",
    "integrity.checkpoints_hint": "链中最新的 {n} 个；供 `nvr verify --against` 使用的见证副本请从 GET /api/v1/checkpoints 获取。",
    "integrity.key": "密钥",
    "integrity.hash": "哈希",
    "integrity.keys": "签名密钥",
    "integrity.suite": "算法",
    "integrity.fingerprint": "指纹（SHA-256）",
    "integrity.retired": "停用时间",
    "integrity.active": "使用中",
    "alerts.title": "异常使用告警",
  },
});

const OUTCOMES = ["allowed", "ok", "denied", "terminated", "failed"];
const FILTERS = ["since", "until", "actor_id", "action", "camera_id", "outcome"];
const PAGE = 100;
const CSV_LIMIT = 10000;

// The search as the API takes it, read from the address.
function currentSearch() {
  const q = hashQuery();
  const out = {};
  for (const k of FILTERS) if (q.get(k)) out[k] = q.get(k);
  out.limit = Number(q.get("limit")) || PAGE;
  if (q.get("after_seq")) out.after_seq = q.get("after_seq");
  return out;
}

function searchPath(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `/audit?${s}` : "/audit";
}

function searchForm(search) {
  return form(
    [
      { name: "since", label: t("audit.since"), type: "datetime-local", value: isoToLocalInput(search.since) },
      { name: "until", label: t("audit.until"), type: "datetime-local", value: isoToLocalInput(search.until) },
      { name: "actor_id", label: t("audit.actor_id"), type: "number", value: search.actor_id || "" },
      { name: "action", label: t("audit.action"), value: search.action || "", placeholder: "playback.start" },
      { name: "camera_id", label: t("audit.camera_id"), value: search.camera_id || "" },
      {
        name: "outcome",
        label: t("audit.outcome"),
        type: "select",
        value: search.outcome || "",
        options: [["", t("audit.any")], ...OUTCOMES.map((o) => [o, label(o)])],
      },
      { name: "limit", label: t("audit.limit"), type: "number", value: search.limit },
    ],
    (v) =>
      go(
        searchPath({
          since: localInputToIso(v.since),
          until: localInputToIso(v.until),
          actor_id: v.actor_id,
          action: v.action.trim(),
          camera_id: v.camera_id.trim(),
          outcome: v.outcome,
          limit: v.limit,
        }),
      ),
    t("audit.search"),
    { id: "audit-form" },
  );
}

function actorCell(ev, search) {
  if (ev.actor_id === null || ev.actor_id === undefined) return h("span", { class: "muted" }, ev.actor_name || "—");
  const link = h("a", { href: `#${searchPath({ ...search, after_seq: undefined, actor_id: ev.actor_id })}`, title: t("audit.filter_user") }, `#${ev.actor_id}`);
  return h("span", {}, ev.actor_name || "", " ", link, h("div", { class: "muted" }, [ev.actor_unit, ev.actor_roles].filter(Boolean).join(" · ")));
}

function eventsTable(events, search) {
  return table(
    [
      { label: t("audit.seq"), value: (e) => String(e.seq) },
      { label: t("audit.at"), value: (e) => timeCell(e.at) },
      { label: t("audit.actor"), value: (e) => actorCell(e, search) },
      { label: t("audit.action"), value: (e) => h("span", { class: "audit-action" }, e.action) },
      { label: t("common.camera"), value: (e) => e.camera_id || "" },
      { label: t("audit.window"), value: (e) => (e.window_start || e.window_end ? h("span", {}, timeCell(e.window_start), " → ", timeCell(e.window_end)) : "") },
      { label: t("audit.object"), value: (e) => e.object_id || "" },
      { label: t("audit.details"), value: (e) => [e.purpose, e.case_ref, e.destination].filter(Boolean).join(" / ") },
      { label: t("audit.outcome"), value: (e) => h("span", { class: `state-${e.outcome} audit-outcome`, title: e.outcome }, label(e.outcome)) },
      { label: t("audit.reason"), value: (e) => e.reason || "" },
      { label: t("audit.client"), value: (e) => e.client_addr || "" },
    ],
    events,
    { id: "audit-table" },
  );
}

async function auditScreen(main) {
  const search = currentSearch();
  main.append(h("h1", {}, t("audit.title")));
  const filters = { ...search };
  delete filters.after_seq;
  delete filters.limit;
  const csv = button(t("audit.csv"), async () => {
    const saved = await api.download("/audit", { ...filters, limit: CSV_LIMIT, format: "csv" }, "audit.csv");
    showNotice(t("audit.csv_done", { name: saved.name, bytes: saved.bytes }));
  }, { id: "audit-csv", class: "secondary" });
  main.append(
    section(
      t("audit.search"),
      searchForm(search),
      h("div", { class: "pager" }, button(t("audit.clear"), () => go("/audit"), { class: "secondary" }), csv, h("span", { class: "muted" }, t("audit.csv_hint", { n: CSV_LIMIT }))),
    ),
  );
  const out = await api.get("/audit", search);
  const events = out.events || [];
  const pager = h("div", { class: "pager", id: "audit-pager" });
  if (events.length) pager.append(h("span", {}, t("audit.page", { first: events[0].seq, last: events[events.length - 1].seq, n: events.length })));
  if (search.after_seq) pager.append(h("a", { href: `#${searchPath({ ...search, after_seq: undefined })}`, class: "button secondary", id: "audit-first" }, t("audit.first")));
  if (events.length >= search.limit && out.next_after_seq !== null) {
    pager.append(h("a", { href: `#${searchPath({ ...search, after_seq: out.next_after_seq })}`, class: "button", id: "audit-next" }, t("audit.next")));
  }
  main.append(section(t("audit.title"), pager, eventsTable(events, search)));
}

// --- integrity ---------------------------------------------------------------------------------------------------
function verifyResult(out) {
  if (out.ok) return h("p", { class: "verify-ok", id: "verify-result", dataset: { ok: "true" } }, t("integrity.ok", { n: out.checked }));
  const p = out.problem || {};
  return h("p", { class: "verify-bad", id: "verify-result", dataset: { ok: "false" } }, t("integrity.bad", { seq: p.seq, kind: p.kind, detail: p.detail, n: out.checked }));
}

async function chainSection() {
  const box = h("div", {});
  const run = async () => {
    const out = await api.get("/audit/verify");
    box.replaceChildren(verifyResult(out), h("p", { class: "muted" }, t("integrity.checked_at", { at: new Date().toISOString() })));
  };
  await run();
  return section(t("integrity.chain"), box, button(t("integrity.verify"), run, { id: "verify-again" }));
}

async function findingsSection(me, reload) {
  const out = await api.get("/integrity/findings");
  const resolver = (me.capabilities || []).includes("integrity.resolve");
  const columns = [
    { label: "#", value: (f) => String(f.id) },
    { label: t("integrity.kind"), value: (f) => h("span", { class: "state-error" }, f.kind) },
    { label: t("common.camera"), value: (f) => [f.camera_id, f.seq !== null ? `seq ${f.seq}` : ""].filter(Boolean).join(" ") },
    { label: t("integrity.subject"), value: (f) => f.subject },
    { label: t("integrity.detail"), value: (f) => f.detail },
    { label: t("integrity.source"), value: (f) => f.source },
    { label: t("integrity.found"), value: (f) => timeCell(f.found) },
    { label: t("integrity.intact_again"), value: (f) => (f.intact_again ? timeCell(f.intact_again) : "—") },
  ];
  if (resolver) {
    columns.push({
      label: t("common.actions"),
      value: (f) =>
        form(
          [{ name: "note", label: t("integrity.note"), required: true }],
          async (v) => {
            await api.post(`/integrity/findings/${f.id}/resolve`, { note: v.note });
            await reload();
            showNotice(t("integrity.resolved", { id: f.id }));
          },
          t("integrity.resolve"),
          { class: "inline finding-resolve", dataset: { finding: f.id } },
        ),
    });
  }
  return section(t("integrity.findings"), table(columns, out.findings, { id: "findings-table" }));
}

async function checkpointsSection() {
  // The chain is paged oldest first; walk to its end and show the newest, which is what an auditor compares.
  let after = 0;
  let last = [];
  for (let i = 0; i < 100; i++) {
    const page = await api.get("/checkpoints", { after_seq: after, limit: 1000 });
    if (page.checkpoints.length) last = page.checkpoints;
    if (!page.more || !page.checkpoints.length) break;
    after = page.checkpoints[page.checkpoints.length - 1].seq;
  }
  const newest = last.slice(-10).reverse();
  return section(
    t("integrity.checkpoints"),
    h("p", { class: "muted" }, t("integrity.checkpoints_hint", { n: newest.length })),
    table(
      [
        { label: t("audit.seq"), value: (c) => String(c.seq) },
        { label: t("common.created"), value: (c) => timeCell(new Date(c.created_us / 1000).toISOString()) },
        { label: t("integrity.key"), value: (c) => h("span", { class: "mono" }, c.key_id) },
        { label: t("integrity.hash"), value: (c) => h("span", { class: "mono" }, c.hash) },
      ],
      newest,
      { id: "checkpoints-table" },
    ),
  );
}

async function keysSection() {
  const out = await api.get("/keys");
  return section(
    t("integrity.keys"),
    table(
      [
        { label: t("integrity.key"), value: (k) => h("span", { class: "mono" }, k.key_id) },
        { label: t("integrity.suite"), value: (k) => k.suite },
        { label: t("integrity.fingerprint"), value: (k) => h("span", { class: "mono" }, k.fingerprint) },
        { label: t("common.created"), value: (k) => timeCell(k.created) },
        { label: t("integrity.retired"), value: (k) => (k.retired ? timeCell(k.retired) : h("span", { class: "state-ok" }, t("integrity.active"))) },
      ],
      out.keys,
      { id: "keys-table" },
    ),
  );
}

async function integrityScreen(main, _params, me, isCurrent) {
  main.append(h("h1", {}, t("integrity.title")));
  const box = h("div", {});
  main.append(box);
  const reload = async () => {
    const parts = [];
    // One section failing (say, no checkpoint yet) must not hide the others: each shows its own error.
    for (const make of [chainSection, () => findingsSection(me, reload), checkpointsSection, keysSection]) {
      try {
        parts.push(await make());
      } catch (e) {
        showError(e);
        parts.push(h("section", {}, h("p", { class: "state-error" }, `${e.code || ""}: ${e.message || e}`)));
      }
    }
    if (isCurrent()) box.replaceChildren(...parts);
  };
  await reload();
}

// --- alerts (approvers review them; auditors read) ----------------------------------------------------------------
async function alertsScreen(main, _params, me) {
  main.append(h("h1", {}, t("alerts.title")));
  const box = h("div", {});
  main.append(box);
  const reload = async () => box.replaceChildren(await alertsSection(me, reload));
  await reload();
}

route("/audit", { nav: { key: "nav.audit", path: "/audit" }, roles: ["auditor"], render: auditScreen });
route("/integrity", { nav: { key: "nav.integrity" }, roles: ["auditor", "admin"], render: integrityScreen });
route("/alerts", { nav: { key: "nav.alerts" }, roles: ["approver", "auditor"], render: alertsScreen });
