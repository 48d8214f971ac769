// The administrators' screens: the camera registry with each camera's recording status (GET /cameras full records
// beside GET /system/cameras: recorder state, online rate, recording completeness), registering a camera and
// changing its lifecycle state; retention policies and which camera keeps which; the capacity forecast; users and
// the user changes that wait for a second admin; system health with its alarms and the open abnormal-use alerts.
// Every change goes through the same endpoint a script would use, so its audit event and its refusals are the API's.
import * as api from "../api.js";
import { add, t } from "../i18n.js";
import { route } from "../router.js";
import { button, bytes, fmtTime, form, h, section, showNotice, table, timeCell } from "../ui.js";

add({
  en: {
    "nav.admin_cameras": "Cameras",
    "nav.admin_policies": "Policies",
    "nav.admin_capacity": "Capacity",
    "nav.admin_users": "Users",
    "nav.admin_health": "Health",
    "admin.cameras.title": "Camera registry",
    "admin.cameras.list": "Cameras and their recording",
    "admin.cameras.id": "Camera id",
    "admin.cameras.name": "Name",
    "admin.cameras.unit": "Managing unit",
    "admin.cameras.share": "Share class",
    "admin.cameras.registry_state": "Registry state",
    "admin.cameras.recorder": "Recorder",
    "admin.cameras.online": "Online rate (24 h)",
    "admin.cameras.complete": "Recording completeness (24 h)",
    "admin.cameras.gaps": "Gaps (24 h)",
    "admin.cameras.last_segment": "Last segment",
    "admin.cameras.policy": "Retention policy",
    "admin.cameras.stream": "Stream URL",
    "admin.cameras.address": "Address",
    "admin.cameras.notes": "Installation notes",
    "admin.cameras.register": "Register a camera",
    "admin.cameras.registered": "Camera {id} registered.",
    "admin.cameras.change_state": "Change state",
    "admin.cameras.new_state": "New state",
    "admin.cameras.state_changed": "Camera {id} is now {state}.",
    "admin.cameras.default_policy": "(default policy)",
    "admin.ack_capacity": "Save even if the capacity forecast warns",
    "admin.never_active": "never active",
    "admin.policies.title": "Retention policies",
    "admin.policies.name": "Name",
    "admin.policies.min_days": "Minimum days",
    "admin.policies.max_days": "Maximum days",
    "admin.policies.effective": "Effective minimum",
    "admin.policies.description": "Description",
    "admin.policies.default": "Default",
    "admin.policies.create": "Create a policy",
    "admin.policies.created": "Policy {name} created.",
    "admin.policies.saved": "Policy {name} saved ({n} segment(s) kept longer).",
    "admin.policies.make_default": "Make default",
    "admin.policies.is_default": "Policy {name} is now the default.",
    "admin.policies.delete": "Delete",
    "admin.policies.deleted": "Policy {name} deleted.",
    "admin.policies.assign": "Move a camera to a policy",
    "admin.policies.assigned": "Camera {camera} now keeps footage under {name}.",
    "admin.policies.floor": "System floor: {n} days; no policy keeps footage for less.",
    "admin.capacity.title": "Capacity",
    "admin.capacity.summary": "Forecast at {at} from the last {days} days of intake; floor {floor} days.",
    "admin.capacity.warnings": "Warnings",
    "admin.capacity.warning": "Camera {camera} needs {needs} days but volume {volume} holds only {holds} days of its footage.",
    "admin.capacity.volumes": "Volumes",
    "admin.capacity.path": "Path",
    "admin.capacity.free": "Free",
    "admin.capacity.total": "Size",
    "admin.capacity.footage": "Footage",
    "admin.capacity.held": "Under hold",
    "admin.capacity.deletable": "Deletable now",
    "admin.capacity.per_day": "Per day",
    "admin.capacity.days": "Days at this rate",
    "admin.capacity.cameras": "Cameras",
    "admin.capacity.holds_days": "Days held",
    "admin.capacity.note": "Note",
    "admin.users.title": "Users",
    "admin.users.username": "User name",
    "admin.users.full_name": "Full name",
    "admin.users.staff_number": "Staff number",
    "admin.users.unit": "Unit",
    "admin.users.roles": "Roles",
    "admin.users.password": "Initial password (at least 12 characters)",
    "admin.users.source": "Sign-in",
    "admin.users.create": "Create a user",
    "admin.users.created": "User {name} created.",
    "admin.users.filed": "Filed: {summary}. A second admin must confirm it.",
    "admin.users.disable": "Disable",
    "admin.users.enable": "Enable",
    "admin.users.disabled": "User {name} disabled; their sessions have ended.",
    "admin.users.pending": "Changes waiting for a second admin",
    "admin.users.change": "Change",
    "admin.users.requested": "Requested",
    "admin.users.expires": "Expires",
    "admin.users.confirm": "Confirm",
    "admin.users.reject": "Reject",
    "admin.users.cancel": "Cancel",
    "admin.users.note": "Note",
    "admin.users.decided": "Change {id}: {state}.",
    "admin.health.title": "System health",
    "admin.health.status": "Status: {status}",
    "admin.health.alarms": "Alarms",
    "admin.health.no_alarms": "No alarms.",
    "admin.health.storage_full": "Recording stopped for lack of room since {since}: {cameras}",
    "admin.health.volumes": "Volumes",
    "admin.health.used": "Used",
    "admin.health.detail": "Detail",
    "admin.health.findings": "Open integrity findings: {list}",
    "admin.health.checkpoint": "Newest signed checkpoint: {at}",
    "admin.health.clock": "Trusted time: {state}, wall clock {ahead} s ahead",
    "admin.health.clock_ok": "trusted",
    "admin.health.clock_bad": "NOT trusted (retention deletes nothing)",
    "admin.health.alerts": "Open abnormal-use alerts",
    "admin.health.alerts_count": "{n} open alert(s)",
    "admin.alerts.rule": "Rule",
    "admin.alerts.raised": "Raised",
    "admin.alerts.detail": "Detail",
    "admin.alerts.suspends": "Grants suspended",
    "admin.alerts.review": "Review",
    "admin.alerts.restore": "restore the grants",
    "admin.alerts.uphold": "uphold",
    "admin.alerts.decision": "Decision",
    "admin.alerts.note": "Note",
    "admin.alerts.reviewed": "Alert {id} reviewed.",
    "code.registered": "registered",
    "code.active": "active",
    "code.suspended": "suspended",
    "code.decommissioned": "decommissioned",
    "code.recording": "recording",
    "code.reconnecting": "reconnecting",
    "code.error": "error",
    "code.offline": "offline",
    "code.disabled": "disabled",
    "code.unconditional": "unconditional",
    "code.authorized": "authorized",
    "code.non_shared": "non-shared",
    "code.ok": "ok",
    "code.degraded": "degraded",
    "code.high_water": "high water",
    "code.critical": "critical",
    "code.unavailable": "unavailable",
    "code.new": "new",
    "code.allowed": "allowed",
    "code.denied": "denied",
    "code.terminated": "terminated",
    "code.failed": "failed",
    "alarm.storage_full": "storage full: recording stopped",
    "alarm.volume_critical": "a volume is nearly full",
    "alarm.volume_unavailable": "a volume is unavailable",
    "alarm.integrity_mismatch": "integrity findings are open",
    "alarm.checkpoints_stale": "signed checkpoints are stale",
    "alarm.clock_untrusted": "the clock is not trusted",
    "alarm.master_key_missing": "no master key: encrypted footage can be neither recorded nor played",
    "alarm.abnormal_use": "abnormal use detected",
  },
  zh: {
    "nav.admin_cameras": "摄像机",
    "nav.admin_policies": "保留策略",
    "nav.admin_capacity": "容量",
    "nav.admin_users": "用户",
    "nav.admin_health": "系统状态",
    "admin.cameras.title": "摄像机登记",
    "admin.cameras.list": "摄像机及其录像情况",
    "admin.cameras.id": "摄像机编号",
    "admin.cameras.name": "名称",
    "admin.cameras.unit": "管理单位",
    "admin.cameras.share": "共享类别",
    "admin.cameras.registry_state": "登记状态",
    "admin.cameras.recorder": "录像状态",
    "admin.cameras.online": "在线率（24 小时）",
    "admin.cameras.complete": "录像完整率（24 小时）",
    "admin.cameras.gaps": "中断（24 小时）",
    "admin.cameras.last_segment": "最后片段",
    "admin.cameras.policy": "保留策略",
    "admin.cameras.stream": "视频流地址",
    "admin.cameras.address": "地址",
    "admin.cameras.notes": "安装备注",
    "admin.cameras.register": "登记摄像机",
    "admin.cameras.registered": "已登记摄像机 {id}。",
    "admin.cameras.change_state": "变更状态",
    "admin.cameras.new_state": "新状态",
    "admin.cameras.state_changed": "摄像机 {id} 现为 {state}。",
    "admin.cameras.default_policy": "（默认策略）",
    "admin.ack_capacity": "即使容量预测告警也保存",
    "admin.never_active": "从未启用",
    "admin.policies.title": "保留策略",
    "admin.policies.name": "名称",
    "admin.policies.min_days": "最少天数",
    "admin.policies.max_days": "最多天数",
    "admin.policies.effective": "实际最少天数",
    "admin.policies.description": "说明",
    "admin.policies.default": "默认",
    "admin.policies.create": "新建策略",
    "admin.policies.created": "已新建策略 {name}。",
    "admin.policies.saved": "已保存策略 {name}（{n} 个片段延长保留）。",
    "admin.policies.make_default": "设为默认",
    "admin.policies.is_default": "策略 {name} 现为默认策略。",
    "admin.policies.delete": "删除",
    "admin.policies.deleted": "已删除策略 {name}。",
    "admin.policies.assign": "为摄像机指定策略",
    "admin.policies.assigned": "摄像机 {camera} 现按 {name} 保留录像。",
    "admin.policies.floor": "系统下限：{n} 天；任何策略的保留时间都不少于此。",
    "admin.capacity.title": "容量",
    "admin.capacity.summary": "预测时间 {at}，依据最近 {days} 天的写入量；下限 {floor} 天。",
    "admin.capacity.warnings": "告警",
    "admin.capacity.warning": "摄像机 {camera} 需保留 {needs} 天，但卷 {volume} 只能保存其 {holds} 天的录像。",
    "admin.capacity.volumes": "存储卷",
    "admin.capacity.path": "路径",
    "admin.capacity.free": "可用",
    "admin.capacity.total": "容量",
    "admin.capacity.footage": "录像",
    "admin.capacity.held": "保全中",
    "admin.capacity.deletable": "现可删除",
    "admin.capacity.per_day": "每日",
    "admin.capacity.days": "按当前速率可用天数",
    "admin.capacity.cameras": "摄像机",
    "admin.capacity.holds_days": "可保存天数",
    "admin.capacity.note": "备注",
    "admin.users.title": "用户",
    "admin.users.username": "用户名",
    "admin.users.full_name": "姓名",
    "admin.users.staff_number": "警号/工号",
    "admin.users.unit": "单位",
    "admin.users.roles": "角色",
    "admin.users.password": "初始密码（至少 12 个字符）",
    "admin.users.source": "登录方式",
    "admin.users.create": "新建用户",
    "admin.users.created": "已新建用户 {name}。",
    "admin.users.filed": "已提交：{summary}。需另一名管理员确认。",
    "admin.users.disable": "停用",
    "admin.users.enable": "启用",
    "admin.users.disabled": "已停用用户 {name}，其会话已结束。",
    "admin.users.pending": "待另一名管理员确认的变更",
    "admin.users.change": "变更",
    "admin.users.requested": "申请",
    "admin.users.expires": "过期时间",
    "admin.users.confirm": "确认",
    "admin.users.reject": "驳回",
    "admin.users.cancel": "撤销",
    "admin.users.note": "备注",
    "admin.users.decided": "变更 {id}：{state}。",
    "admin.health.title": "系统状态",
    "admin.health.status": "状态：{status}",
    "admin.health.alarms": "告警",
    "admin.health.no_alarms": "无告警。",
    "admin.health.storage_full": "自 {since} 起因空间不足停止录像：{cameras}",
    "admin.health.volumes": "存储卷",
    "admin.health.used": "已用",
    "admin.health.detail": "详情",
    "admin.health.findings": "未处理的完整性问题：{list}",
    "admin.health.checkpoint": "最新签名检查点：{at}",
    "admin.health.clock": "可信时间：{state}，系统时钟快 {ahead} 秒",
    "admin.health.clock_ok": "可信",
    "admin.health.clock_bad": "不可信（保留清理暂停删除）",
    "admin.health.alerts": "未处理的异常使用告警",
    "admin.health.alerts_count": "{n} 条未处理告警",
    "admin.alerts.rule": "规则",
    "admin.alerts.raised": "触发时间",
    "admin.alerts.detail": "详情",
    "admin.alerts.suspends": "已暂停的授权",
    "admin.alerts.review": "复核",
    "admin.alerts.restore": "恢复授权",
    "admin.alerts.uphold": "维持",
    "admin.alerts.decision": "决定",
    "admin.alerts.note": "备注",
    "admin.alerts.reviewed": "告警 {id} 已复核。",
    "code.registered": "已登记",
    "code.active": "启用",
    "code.suspended": "暂停",
    "code.decommissioned": "已退役",
    "code.recording": "录像中",
    "code.reconnecting": "重连中",
    "code.error": "故障",
    "code.offline": "离线",
    "code.disabled": "已停用",
    "code.unconditional": "无条件共享",
    "code.authorized": "授权共享",
    "code.non_shared": "不共享",
    "code.ok": "正常",
    "code.degraded": "降级",
    "code.high_water": "高水位",
    "code.critical": "严重",
    "code.unavailable": "不可用",
    "code.new": "新增",
    "code.allowed": "允许",
    "code.denied": "拒绝",
    "code.terminated": "中止",
    "code.failed": "失败",
    "alarm.storage_full": "存储已满：录像停止",
    "alarm.volume_critical": "存储卷即将写满",
    "alarm.volume_unavailable": "存储卷不可用",
    "alarm.integrity_mismatch": "存在未处理的完整性问题",
    "alarm.checkpoints_stale": "签名检查点过期",
    "alarm.clock_untrusted": "时钟不可信",
    "alarm.master_key_missing": "缺少主密钥：加密录像无法录制或回放",
    "alarm.abnormal_use": "检测到异常使用",
  },
});

const CAMERA_STATES = ["registered", "active", "suspended", "decommissioned"];
const SHARE_CLASSES = ["unconditional", "authorized", "non_shared"];
const ROLES = ["admin", "approver", "officer", "operator", "auditor", "viewer"];

function percent(share) {
  return share === null || share === undefined ? t("admin.never_active") : `${(share * 100).toFixed(1)}%`;
}

// A code the API gives (a state, a share class) in the user's language; the code itself when no word exists for
// it (a new state must still show, never a blank or a key), and always the code on hover.
export function label(code) {
  const key = `code.${code}`;
  const word = t(key);
  return word === key ? code : word;
}

function stateText(state) {
  return h("span", { class: `state-${state}`, title: state }, label(state));
}

// A screen that reloads itself after each change, keeping the notice the change produced.
function reloader(main, build) {
  const box = h("div", {});
  main.append(box);
  const reload = async () => box.replaceChildren(...(await build(reload)));
  return reload;
}

// --- cameras -----------------------------------------------------------------------------------------------------
function recorderCell(st) {
  if (!st) return "—";
  return h("span", {}, stateText(st.state), st.reason ? h("div", { class: "muted" }, st.reason) : "");
}

function gapsCell(st) {
  if (!st || !st.gaps_24h.length) return "";
  return h(
    "ul",
    { class: "plain gaps", title: t("admin.cameras.gaps") },
    st.gaps_24h.map((g) => h("li", {}, `${g.reason}: `, timeCell(g.start), " → ", g.end ? timeCell(g.end) : "…")),
  );
}

function stateForm(cam, reload) {
  return form(
    [
      { name: "state", label: t("admin.cameras.new_state"), type: "select", value: cam.state, options: CAMERA_STATES.map((s) => [s, label(s)]) },
      { name: "reason", label: t("common.reason") },
    ],
    async (v) => {
      const out = await api.post(`/cameras/${encodeURIComponent(cam.id)}/state`, { state: v.state, reason: v.reason || null });
      await reload();
      showNotice(t("admin.cameras.state_changed", { id: out.id, state: label(out.state) }));
    },
    t("admin.cameras.change_state"),
    { class: "inline camera-state", dataset: { camera: cam.id } },
  );
}

function registerForm(policies, reload) {
  return form(
    [
      { name: "id", label: t("admin.cameras.id"), required: true },
      { name: "name", label: t("admin.cameras.name"), required: true },
      { name: "stream_url", label: t("admin.cameras.stream"), required: true, placeholder: "rtsp://…" },
      { name: "managing_unit", label: t("admin.cameras.unit"), required: true },
      { name: "share_class", label: t("admin.cameras.share"), type: "select", value: "authorized", options: SHARE_CLASSES.map((s) => [s, label(s)]) },
      { name: "address", label: t("admin.cameras.address") },
      { name: "installation_notes", label: t("admin.cameras.notes"), type: "textarea" },
      {
        name: "policy",
        label: t("admin.cameras.policy"),
        type: "select",
        options: [["", t("admin.cameras.default_policy")], ...policies.map((p) => [p.name, p.name])],
      },
      { name: "ack", label: t("admin.ack_capacity"), type: "checkboxes", options: [["yes", "✓"]] },
    ],
    async (v) => {
      const body = {
        id: v.id,
        name: v.name,
        stream_url: v.stream_url,
        managing_unit: v.managing_unit,
        share_class: v.share_class,
        acknowledge_capacity_warning: v.ack.includes("yes"),
      };
      if (v.address) body.address = v.address;
      if (v.installation_notes) body.installation_notes = v.installation_notes;
      if (v.policy) body.policy = v.policy;
      const out = await api.post("/cameras", body);
      await reload();
      showNotice(t("admin.cameras.registered", { id: out.id }));
    },
    t("admin.cameras.register"),
    { id: "camera-form" },
  );
}

async function camerasScreen(reload) {
  const [cams, status, pols] = await Promise.all([api.get("/cameras"), api.get("/system/cameras"), api.get("/retention/policies")]);
  const byId = Object.fromEntries(status.cameras.map((s) => [s.camera_id, s]));
  const rows = cams.cameras.map((c) => ({ ...c, status: byId[c.id] }));
  const tableEl = h(
    "table",
    { id: "cameras-table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        [
          t("admin.cameras.id"),
          t("admin.cameras.name"),
          t("admin.cameras.unit"),
          t("admin.cameras.share"),
          t("admin.cameras.registry_state"),
          t("admin.cameras.recorder"),
          t("admin.cameras.online"),
          t("admin.cameras.complete"),
          t("admin.cameras.last_segment"),
          t("admin.cameras.policy"),
          t("common.actions"),
        ].map((x) => h("th", {}, x)),
      ),
    ),
    h(
      "tbody",
      {},
      rows.map((c) =>
        h(
          "tr",
          { dataset: { camera: c.id } },
          h("td", {}, c.id),
          h("td", {}, c.name, h("div", { class: "muted" }, c.stream_url), c.address ? h("div", { class: "muted" }, c.address) : ""),
          h("td", {}, c.managing_unit),
          h("td", {}, label(c.share_class)),
          h("td", { class: "camera-state-cell" }, stateText(c.state)),
          h("td", {}, recorderCell(c.status)),
          h("td", { class: "online" }, c.status ? percent(c.status.online_share_24h) : "—"),
          h("td", {}, h("div", { class: "completeness" }, c.status ? percent(c.status.recorded_share_24h) : "—"), gapsCell(c.status)),
          h("td", {}, c.status ? timeCell(c.status.last_segment_end) : "—"),
          h("td", {}, c.policy || "—"),
          h("td", {}, stateForm(c, reload)),
        ),
      ),
    ),
  );
  return [
    section(t("admin.cameras.list"), rows.length ? h("div", { class: "wide" }, tableEl) : h("p", { class: "empty" }, t("common.none"))),
    section(t("admin.cameras.register"), registerForm(pols.policies, reload)),
  ];
}

// --- policies ----------------------------------------------------------------------------------------------------
function days(value) {
  return value === "" || value === undefined ? null : Number(value);
}

function policyEditForm(p, reload) {
  return form(
    [
      { name: "min_days", label: t("admin.policies.min_days"), type: "number", value: p.min_days, required: true },
      { name: "max_days", label: t("admin.policies.max_days"), type: "number", value: p.max_days ?? "" },
      { name: "description", label: t("admin.policies.description"), value: p.description || "" },
      { name: "ack", label: t("admin.ack_capacity"), type: "checkboxes", options: [["yes", "✓"]] },
    ],
    async (v) => {
      const out = await api.patch(`/retention/policies/${encodeURIComponent(p.name)}`, {
        min_days: days(v.min_days),
        max_days: days(v.max_days),
        description: v.description,
        acknowledge_capacity_warning: v.ack.includes("yes"),
      });
      await reload();
      showNotice(t("admin.policies.saved", { name: out.name, n: out.extended_segments }));
    },
    t("common.save"),
    { class: "inline policy-edit", dataset: { policy: p.name } },
  );
}

function policyActions(p, reload) {
  if (p.is_default) return "";
  return h(
    "div",
    { class: "inline" },
    button(t("admin.policies.make_default"), async () => {
      await api.post(`/retention/policies/${encodeURIComponent(p.name)}/default`);
      await reload();
      showNotice(t("admin.policies.is_default", { name: p.name }));
    }, { class: "secondary" }),
    button(t("admin.policies.delete"), async () => {
      await api.del(`/retention/policies/${encodeURIComponent(p.name)}`);
      await reload();
      showNotice(t("admin.policies.deleted", { name: p.name }));
    }, { class: "danger" }),
  );
}

async function policiesScreen(reload) {
  const [pols, cams] = await Promise.all([api.get("/retention/policies"), api.get("/cameras")]);
  const list = pols.policies;
  const floor = list.length ? Math.min(...list.map((p) => p.effective_min_days)) : null;
  const listTable = table(
    [
      { label: t("admin.policies.name"), value: (p) => h("span", {}, h("strong", {}, p.name), p.is_default ? ` (${t("admin.policies.default")})` : "") },
      { label: t("admin.policies.effective"), value: (p) => String(p.effective_min_days) },
      { label: t("common.cameras"), value: (p) => p.cameras.join(", ") || "—" },
      { label: t("common.actions"), value: (p) => h("div", {}, policyEditForm(p, reload), policyActions(p, reload)) },
    ],
    list,
    { id: "policies-table" },
  );
  const create = form(
    [
      { name: "name", label: t("admin.policies.name"), required: true },
      { name: "min_days", label: t("admin.policies.min_days"), type: "number", required: true },
      { name: "max_days", label: t("admin.policies.max_days"), type: "number" },
      { name: "description", label: t("admin.policies.description") },
    ],
    async (v) => {
      const body = { name: v.name, min_days: days(v.min_days) };
      if (v.max_days !== "") body.max_days = days(v.max_days);
      if (v.description) body.description = v.description;
      const out = await api.post("/retention/policies", body);
      await reload();
      showNotice(t("admin.policies.created", { name: out.name }));
    },
    t("admin.policies.create"),
    { id: "policy-form" },
  );
  const assign = form(
    [
      { name: "camera", label: t("common.camera"), type: "select", options: cams.cameras.map((c) => [c.id, `${c.id} (${c.policy || "—"})`]) },
      { name: "policy", label: t("admin.cameras.policy"), type: "select", options: list.map((p) => [p.name, p.name]) },
      { name: "ack", label: t("admin.ack_capacity"), type: "checkboxes", options: [["yes", "✓"]] },
    ],
    async (v) => {
      const out = await api.put(`/cameras/${encodeURIComponent(v.camera)}/policy`, {
        policy: v.policy,
        acknowledge_capacity_warning: v.ack.includes("yes"),
      });
      await reload();
      showNotice(t("admin.policies.assigned", { camera: out.camera, name: out.policy.name }));
    },
    t("common.save"),
    { id: "assign-form" },
  );
  return [
    section(t("admin.policies.title"), floor !== null ? h("p", { class: "muted" }, t("admin.policies.floor", { n: floor })) : "", listTable),
    section(t("admin.policies.create"), create),
    section(t("admin.policies.assign"), cams.cameras.length ? assign : h("p", { class: "empty" }, t("common.none"))),
  ];
}

// --- capacity ----------------------------------------------------------------------------------------------------
function num(v) {
  return v === null || v === undefined ? "—" : String(v);
}

async function capacityScreen() {
  const cap = await api.get("/capacity");
  const warnings = cap.warnings.length
    ? h(
        "ul",
        { id: "capacity-warnings", class: "state-warning" },
        cap.warnings.map((w) => h("li", {}, t("admin.capacity.warning", { camera: w.camera, needs: w.needs_days, volume: w.volume, holds: w.holds_days }))),
      )
    : h("p", { class: "empty" }, t("common.none"));
  const volumes = table(
    [
      { label: t("admin.capacity.path"), value: (v) => h("span", {}, v.path, v.error ? h("div", { class: "state-error" }, v.error) : "") },
      { label: t("admin.capacity.free"), value: (v) => bytes(v.free_bytes) },
      { label: t("admin.capacity.total"), value: (v) => bytes(v.total_bytes) },
      { label: t("admin.capacity.footage"), value: (v) => bytes(v.footage_bytes) },
      { label: t("admin.capacity.held"), value: (v) => bytes(v.held_bytes) },
      { label: t("admin.capacity.deletable"), value: (v) => bytes(v.deletable_now_bytes) },
      { label: t("admin.capacity.per_day"), value: (v) => bytes(v.bytes_per_day) },
      { label: t("admin.capacity.days"), value: (v) => num(v.days_at_current_rate) },
      { label: t("admin.capacity.cameras"), value: (v) => v.cameras.join(", ") || "—" },
    ],
    cap.volumes,
    { id: "capacity-volumes" },
  );
  const cameras = table(
    [
      { label: t("common.camera"), value: (c) => c.camera },
      { label: t("common.state"), value: (c) => stateText(c.state) },
      { label: t("admin.cameras.policy"), value: (c) => c.policy },
      { label: t("admin.policies.min_days"), value: (c) => num(c.min_days) },
      { label: t("admin.policies.max_days"), value: (c) => num(c.max_days) },
      { label: t("admin.capacity.per_day"), value: (c) => (c.bytes_per_day === null ? "—" : bytes(c.bytes_per_day)) },
      { label: t("admin.capacity.holds_days"), value: (c) => num(c.holds_days) },
      { label: t("admin.capacity.note"), value: (c) => c.note || "" },
    ],
    cap.cameras,
    { id: "capacity-cameras" },
  );
  return [
    section(
      t("admin.capacity.title"),
      h("p", { class: "muted" }, t("admin.capacity.summary", { at: fmtTime(cap.at), days: cap.window_days, floor: cap.floor_days })),
      h("h3", {}, t("admin.capacity.warnings")),
      warnings,
    ),
    section(t("admin.capacity.volumes"), volumes),
    section(t("admin.capacity.cameras"), cameras),
  ];
}

// --- users -------------------------------------------------------------------------------------------------------
function userActions(u, reload) {
  if (u.state === "active") {
    return button(t("admin.users.disable"), async () => {
      await api.post(`/users/${u.id}/disable`, {});
      await reload();
      showNotice(t("admin.users.disabled", { name: u.username }));
    }, { class: "danger user-disable", dataset: { user: u.username } });
  }
  return button(t("admin.users.enable"), async () => {
    const ch = await api.post(`/users/${u.id}/enable`, {});
    await reload();
    showNotice(t("admin.users.filed", { summary: ch.summary }));
  }, { class: "secondary user-enable", dataset: { user: u.username } });
}

function changeActions(ch, me, reload) {
  const decide = async (step, body) => {
    const out = await api.post(`/user-changes/${ch.id}/${step}`, body);
    await reload();
    showNotice(t("admin.users.decided", { id: out.id, state: out.state }));
  };
  if (ch.requested_by === me.id) {
    return button(t("admin.users.cancel"), () => decide("cancel", {}), { class: "secondary change-cancel", dataset: { change: ch.id } });
  }
  return h(
    "div",
    { class: "inline" },
    button(t("admin.users.confirm"), () => decide("confirm", undefined), { class: "change-confirm", dataset: { change: ch.id } }),
    form(
      [{ name: "reason", label: t("admin.users.note") }],
      (v) => decide("reject", v.reason ? { reason: v.reason } : {}),
      t("admin.users.reject"),
      { class: "inline change-reject", dataset: { change: ch.id } },
    ),
  );
}

async function usersScreen(reload, me) {
  const [list, pending] = await Promise.all([api.get("/users"), api.get("/user-changes", { state: "pending" })]);
  const users = table(
    [
      { label: t("admin.users.username"), value: (u) => u.username },
      { label: t("admin.users.full_name"), value: (u) => u.full_name },
      { label: t("admin.users.staff_number"), value: (u) => u.staff_number },
      { label: t("admin.users.unit"), value: (u) => u.unit },
      { label: t("admin.users.roles"), value: (u) => u.roles.join(", ") },
      { label: t("common.state"), value: (u) => stateText(u.state) },
      { label: t("admin.users.source"), value: (u) => u.auth_source },
      { label: t("common.actions"), value: (u) => (u.id === me.id ? "" : userActions(u, reload)) },
    ],
    list.users,
    { id: "users-table" },
  );
  const changes = table(
    [
      { label: "#", value: (c) => String(c.id) },
      { label: t("admin.users.change"), value: (c) => h("span", {}, h("strong", {}, c.kind), " ", c.summary) },
      { label: t("admin.users.requested"), value: (c) => h("span", {}, `${c.requested_by_name}, `, timeCell(c.requested)) },
      { label: t("admin.users.expires"), value: (c) => timeCell(c.expires) },
      { label: t("common.actions"), value: (c) => changeActions(c, me, reload) },
    ],
    pending.changes,
    { id: "changes-table" },
  );
  const create = form(
    [
      { name: "username", label: t("admin.users.username"), required: true },
      { name: "full_name", label: t("admin.users.full_name"), required: true },
      { name: "staff_number", label: t("admin.users.staff_number"), required: true },
      { name: "unit", label: t("admin.users.unit"), required: true },
      { name: "roles", label: t("admin.users.roles"), type: "checkboxes", options: ROLES.map((r) => [r, r]) },
      { name: "password", label: t("admin.users.password"), type: "password", required: true, autocomplete: "new-password" },
    ],
    async (v) => {
      const resp = await api.call("POST", "/users", {
        body: { username: v.username, full_name: v.full_name, staff_number: v.staff_number, unit: v.unit, roles: v.roles, password: v.password },
        raw: true,
      });
      const out = await resp.json();
      await reload();
      // 202: a role that reaches footage, grants, the audit trail or people waits for a second admin.
      showNotice(resp.status === 202 ? t("admin.users.filed", { summary: out.summary }) : t("admin.users.created", { name: out.username }));
    },
    t("admin.users.create"),
    { id: "user-form" },
  );
  return [section(t("admin.users.title"), users), section(t("admin.users.pending"), changes), section(t("admin.users.create"), create)];
}

// --- health and alerts -------------------------------------------------------------------------------------------
function alarmList(health) {
  if (!health.alarms.length) return h("p", { class: "state-ok", id: "alarms" }, t("admin.health.no_alarms"));
  return h(
    "ul",
    { id: "alarms" },
    health.alarms.map((code) => h("li", { class: "state-error", dataset: { alarm: code } }, h("strong", {}, code), ` — ${t(`alarm.${code}`)}`)),
  );
}

function healthDetails(health) {
  const out = [];
  if (health.storage_full) {
    out.push(h("p", { class: "state-error" }, t("admin.health.storage_full", { since: health.storage_full.since || "—", cameras: health.storage_full.cameras.join(", ") })));
  }
  const findings = Object.entries(health.integrity_findings || {});
  if (findings.length) out.push(h("p", { class: "state-error" }, t("admin.health.findings", { list: findings.map(([k, n]) => `${k} × ${n}`).join(", ") })));
  if (health.newest_checkpoint) out.push(h("p", {}, t("admin.health.checkpoint", { at: health.newest_checkpoint })));
  if (health.clock) {
    const ok = health.clock.trusted;
    out.push(h("p", { class: ok ? "" : "state-error" }, t("admin.health.clock", { state: t(ok ? "admin.health.clock_ok" : "admin.health.clock_bad"), ahead: health.clock.ahead_seconds })));
  }
  return out;
}

function reviewForm(a, reload) {
  return form(
    [
      { name: "decision", label: t("admin.alerts.decision"), type: "select", options: [["restore", t("admin.alerts.restore")], ["uphold", t("admin.alerts.uphold")]] },
      { name: "note", label: t("admin.alerts.note"), required: true },
    ],
    async (v) => {
      await api.post(`/alerts/${a.id}/review`, { decision: v.decision, note: v.note });
      await reload();
      showNotice(t("admin.alerts.reviewed", { id: a.id }));
    },
    t("admin.alerts.review"),
    { class: "inline alert-review", dataset: { alert: a.id } },
  );
}

// Open alerts; approvers (who review them) get the review form, everyone else reads.
export async function alertsSection(me, reload) {
  const out = await api.get("/alerts", { state: "open" });
  const reviewer = (me.roles || []).includes("approver");
  const who = (p) => (p ? `${p.full_name || ""} (${p.username || p.id})` : "—");
  const columns = [
    { label: "#", value: (a) => String(a.id) },
    { label: t("admin.alerts.rule"), value: (a) => a.rule },
    { label: t("common.user"), value: (a) => who(a.user) },
    { label: t("admin.alerts.raised"), value: (a) => timeCell(a.raised) },
    { label: t("admin.alerts.detail"), value: (a) => a.detail },
    { label: t("admin.alerts.suspends"), value: (a) => a.suspended_grants.join(", ") || "—" },
  ];
  if (reviewer) columns.push({ label: t("common.actions"), value: (a) => (a.user && a.user.id === me.id ? "" : reviewForm(a, reload)) });
  return section(t("admin.health.alerts"), h("p", { class: "muted" }, t("admin.health.alerts_count", { n: out.alerts.length })), table(columns, out.alerts, { id: "alerts-table" }));
}

async function healthScreen(reload, me) {
  const health = await api.get("/system/health");
  const volumes = table(
    [
      { label: t("admin.capacity.path"), value: (v) => v.path },
      { label: t("common.state"), value: (v) => stateText(v.state) },
      { label: t("admin.health.used"), value: (v) => (v.used_percent === null ? "—" : `${v.used_percent}%`) },
      { label: t("admin.capacity.free"), value: (v) => bytes(v.free_bytes) },
      { label: t("admin.capacity.total"), value: (v) => bytes(v.total_bytes) },
      { label: t("admin.health.detail"), value: (v) => v.detail || "" },
    ],
    health.volumes,
    { id: "health-volumes" },
  );
  const parts = [
    section(
      t("admin.health.alarms"),
      h("p", { id: "health-status", class: health.status === "ok" ? "state-ok" : "state-error" }, t("admin.health.status", { status: label(health.status) })),
      alarmList(health),
      ...healthDetails(health),
    ),
    section(t("admin.health.volumes"), volumes),
  ];
  const mayReadAlerts = (me.roles || []).some((r) => ["admin", "approver", "auditor"].includes(r));
  if (mayReadAlerts) parts.push(await alertsSection(me, reload));
  return parts;
}

// --- routes ------------------------------------------------------------------------------------------------------
function screen(title, build) {
  return async (main, _params, me) => {
    main.append(h("h1", {}, t(title)));
    const reload = reloader(main, (again) => build(again, me));
    await reload();
  };
}

route("/admin/cameras", { nav: { key: "nav.admin_cameras" }, roles: ["admin"], render: screen("admin.cameras.title", camerasScreen) });
route("/admin/policies", { nav: { key: "nav.admin_policies" }, roles: ["admin"], render: screen("admin.policies.title", policiesScreen) });
route("/admin/capacity", { nav: { key: "nav.admin_capacity" }, roles: ["admin"], render: screen("admin.capacity.title", capacityScreen) });
route("/admin/users", { nav: { key: "nav.admin_users" }, roles: ["admin"], render: screen("admin.users.title", usersScreen) });
route("/admin/health", { nav: { key: "nav.admin_health" }, roles: ["admin", "operator"], render: screen("admin.health.title", healthScreen) });
