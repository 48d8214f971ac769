// Officers, operators and viewers: the cameras a grant shows them, a timeline per camera with click-to-play,
// live view, access requests and export requests. Everything goes through the public API, so what a screen shows
// is exactly what the person's grants allow, and every retrieval is audited as for any client.
import * as api from "../api.js";
import { add, t } from "../i18n.js";
import { hashQuery, onLeave, route } from "../router.js";
import {
  bytes,
  button,
  clear,
  fmtTime,
  form,
  guarded,
  h,
  isoToLocalInput,
  localInputToIso,
  section,
  showNotice,
  table,
  toIso,
} from "../ui.js";

const FOOTAGE_ROLES = ["officer", "operator", "viewer"];
// The purpose of viewing is remembered per person and per tab (sessionStorage, like the token): a shared
// workstation never offers the next person someone else's case.
const purposeKey = (me) => `nvr.purpose.${me.id}`;
const HOUR_MS = 3600_000;
const DAY_MS = 24 * HOUR_MS;
// A click at T plays T-5 min .. T+25 min: enough to scrub around the moment without a new ticket, short enough
// to start at once. The server's limit (playback_max_seconds) may be shorter: window_too_long halves it.
const BEFORE_MS = 5 * 60_000;
const AFTER_MS = 25 * 60_000;

add({
  en: {
    "nav.cameras": "Cameras",
    "nav.requests": "Access requests",
    "nav.exports": "Exports",
    "cameras.title": "Cameras you may see",
    "cameras.open": "Open",
    "cameras.name": "Name",
    "cameras.unit": "Managing unit",
    "cameras.share": "Share class",
    "camera.timeline": "Timeline",
    "camera.show": "Show",
    "camera.zoom_in": "Zoom in",
    "camera.zoom_out": "Zoom out",
    "camera.earlier": "◀ Earlier",
    "camera.later": "Later ▶",
    "camera.last_24h": "Last 24 h",
    "camera.legend_run": "Recorded",
    "camera.legend_gap": "Gap (reason on hover)",
    "camera.legend_hold": "Evidence hold",
    "camera.legend_cursor": "Playing position",
    "camera.summary": "Recorded runs: {runs} · gaps: {gaps} · holds: {holds} · segments: {segments}",
    "camera.click_to_play": "Click the timeline to play from that moment.",
    "camera.purpose": "Purpose of viewing (audited)",
    "camera.purpose_needed": "Enter the purpose of viewing before playing footage.",
    "camera.wall": "Playing",
    "camera.loaded": "Loaded {start} – {end}",
    "camera.live": "Live",
    "camera.gap": "Gap {start} – {end}: {reason}",
    "camera.run": "Recorded {start} – {end} ({segments} segments)",
    "camera.hold": "Hold {case_ref}: {title}",
    "camera.in_gap": "Nothing recorded at that moment; playing from the next recorded footage.",
    "camera.no_media": "The browser could not play this footage.",
    "live.title": "Live: {camera}",
    "live.back": "Back to the timeline",
    "live.connecting": "Connecting…",
    "live.playing": "Live",
    "live.ended": "The live stream ended.",
    "live.unsupported": "This browser cannot play the stream ({codecs}).",
    "live.reconnect": "Reconnect",
    "requests.title": "Access requests",
    "requests.new": "Ask for access",
    "requests.mine": "My requests",
    "requests.cameras": "Camera ids (comma separated)",
    "requests.actions": "Actions",
    "requests.window_start": "Footage from",
    "requests.window_end": "Footage until",
    "requests.valid_until": "Access valid until",
    "requests.max_streams": "Concurrent streams",
    "requests.filed": "Request #{id} filed; an approver will decide.",
    "requests.withdraw": "Withdraw",
    "requests.decision": "Decision",
    "requests.window": "Window",
    "requests.last_days": "last {n} days",
    "action.live": "live",
    "action.playback": "playback",
    "action.export": "export",
    "exports.title": "Export requests",
    "exports.new": "File an export request",
    "exports.list": "Exports I filed, co-signed or may co-sign",
    "exports.legal_basis": "Legal basis (e.g. letter number)",
    "exports.recipient": "Recipient",
    "exports.destination": "Declared destination of the copy",
    "exports.filed": "Export request #{id} filed; a second officer of your unit must co-sign it.",
    "exports.requester": "Requester",
    "exports.cosigner": "Co-signer",
    "exports.job": "Job",
    "exports.cosign": "Co-sign",
    "exports.start_job": "Make the bundle",
    "exports.cancel_job": "Cancel job",
    "exports.withdraw": "Withdraw",
    "exports.download": "Download",
    "exports.download_to": "This copy goes to",
    "exports.downloaded": "Downloaded {name} ({size}) for “{destination}”.",
    "exports.downloads": "{n} downloads",
    "exports.decisions": "Decisions",
  },
  zh: {
    "nav.cameras": "摄像机",
    "nav.requests": "调阅申请",
    "nav.exports": "导出",
    "cameras.title": "您可查看的摄像机",
    "cameras.open": "打开",
    "cameras.name": "名称",
    "cameras.unit": "管理单位",
    "cameras.share": "共享类别",
    "camera.timeline": "时间轴",
    "camera.show": "显示",
    "camera.zoom_in": "放大",
    "camera.zoom_out": "缩小",
    "camera.earlier": "◀ 更早",
    "camera.later": "更晚 ▶",
    "camera.last_24h": "最近24小时",
    "camera.legend_run": "已录制",
    "camera.legend_gap": "缺口（悬停查看原因）",
    "camera.legend_hold": "证据保全",
    "camera.legend_cursor": "播放位置",
    "camera.summary": "录像段 {runs} 个，缺口 {gaps} 个，保全 {holds} 个，分段 {segments} 个",
    "camera.click_to_play": "点击时间轴即从该时刻开始播放。",
    "camera.purpose": "调阅用途（将记入审计）",
    "camera.purpose_needed": "播放录像前请填写调阅用途。",
    "camera.wall": "正在播放",
    "camera.loaded": "已加载 {start} – {end}",
    "camera.live": "实时",
    "camera.gap": "缺口 {start} – {end}：{reason}",
    "camera.run": "已录制 {start} – {end}（{segments} 个分段）",
    "camera.hold": "保全 {case_ref}：{title}",
    "camera.in_gap": "该时刻没有录像，从其后的录像开始播放。",
    "camera.no_media": "浏览器无法播放此录像。",
    "live.title": "实时画面：{camera}",
    "live.back": "返回时间轴",
    "live.connecting": "正在连接…",
    "live.playing": "实时",
    "live.ended": "实时流已结束。",
    "live.unsupported": "此浏览器无法播放该视频流（{codecs}）。",
    "live.reconnect": "重新连接",
    "requests.title": "调阅申请",
    "requests.new": "申请调阅权限",
    "requests.mine": "我的申请",
    "requests.cameras": "摄像机编号（逗号分隔）",
    "requests.actions": "操作",
    "requests.window_start": "录像起始",
    "requests.window_end": "录像截止",
    "requests.valid_until": "权限有效期至",
    "requests.max_streams": "并发流数",
    "requests.filed": "申请 #{id} 已提交，等待审批人决定。",
    "requests.withdraw": "撤回",
    "requests.decision": "决定",
    "requests.window": "录像时段",
    "requests.last_days": "最近 {n} 天",
    "action.live": "实时",
    "action.playback": "回放",
    "action.export": "导出",
    "exports.title": "导出申请",
    "exports.new": "提交导出申请",
    "exports.list": "我提交、会签或可会签的导出",
    "exports.legal_basis": "法律依据（如公函编号）",
    "exports.recipient": "接收方",
    "exports.destination": "申报的拷贝去向",
    "exports.filed": "导出申请 #{id} 已提交，需由本单位另一名民警会签。",
    "exports.requester": "申请人",
    "exports.cosigner": "会签人",
    "exports.job": "任务",
    "exports.cosign": "会签",
    "exports.start_job": "生成证据包",
    "exports.cancel_job": "取消任务",
    "exports.withdraw": "撤回",
    "exports.download": "下载",
    "exports.download_to": "本次拷贝去向",
    "exports.downloaded": "已下载 {name}（{size}），去向：“{destination}”。",
    "exports.downloads": "已下载 {n} 次",
    "exports.decisions": "审批意见",
  },
});

const enc = encodeURIComponent;

// A default for <input type="datetime-local">: whole minutes, since the input's default step is 60 s and a value
// with seconds would make the browser refuse the form.
export function minuteInput(msValue) {
  return isoToLocalInput(toIso(Math.floor(msValue / 60_000) * 60_000));
}
const ms = (iso) => new Date(iso).getTime();

export function stateCell(state) {
  return h("span", { class: `state state-${state}`, dataset: { state } }, state);
}

export function personName(p) {
  return p ? `${p.full_name} (${p.username})` : "—";
}

export function splitIds(text) {
  return String(text || "")
    .split(/[\s,，]+/)
    .map((s) => s.trim())
    .filter(Boolean);
}

export function windowText(w) {
  if (!w) return "—";
  if (w.last_days) return t("requests.last_days", { n: w.last_days });
  return `${fmtTime(w.start)} – ${fmtTime(w.end)}`;
}

// --- cameras list ------------------------------------------------------------------------------------------------
route("/cameras", {
  nav: { key: "nav.cameras" },
  roles: FOOTAGE_ROLES,
  async render(main) {
    const out = await api.get("/cameras");
    main.append(
      h("h1", {}, t("cameras.title")),
      table(
        [
          { label: t("common.camera"), value: (c) => h("a", { href: `#/cameras/${enc(c.id)}`, class: "camera-link", dataset: { camera: c.id } }, c.id) },
          { label: t("cameras.name"), value: (c) => c.name },
          { label: t("cameras.unit"), value: (c) => c.managing_unit },
          { label: t("cameras.share"), value: (c) => c.share_class },
          { label: t("common.state"), value: (c) => stateCell(c.state) },
        ],
        out.cameras,
        { id: "camera-list" },
      ),
    );
  },
});

// --- camera: timeline and playback -------------------------------------------------------------------------------

// Media time ↔ wall time for one loaded playback: media time 0 is X-Nvr-Start; each gap in X-Nvr-Gaps was
// collapsed at its at_media_us, so the wall clock jumps by the gap's length there.
export function mediaToWall(info, mediaMs) {
  let wall = info.startMs + mediaMs;
  for (const g of info.gaps) if (mediaMs >= g.atMs) wall += g.endMs - g.startMs;
  return wall;
}

export function wallToMedia(info, wallMs) {
  let media = wallMs - info.startMs;
  for (const g of info.gaps) {
    if (wallMs >= g.endMs) media -= g.endMs - g.startMs;
    else if (wallMs > g.startMs) return { media: g.atMs, inGap: true };
  }
  return { media: Math.max(0, media), inGap: false };
}

function parseInfo(resp) {
  const gaps = JSON.parse(resp.headers.get("X-Nvr-Gaps") || "[]").map((g) => ({
    startMs: ms(g.start),
    endMs: ms(g.end),
    atMs: g.at_media_us / 1000,
  }));
  const truncated = resp.headers.get("X-Nvr-Truncated-At");
  return {
    startMs: ms(resp.headers.get("X-Nvr-Start")),
    endMs: ms(truncated || resp.headers.get("X-Nvr-End")),
    gaps,
    // Whether the video can seek anywhere in the window (byte ranges), or only within what it has buffered.
    ranges: resp.status === 206 || (resp.headers.get("Accept-Ranges") || "").includes("bytes"),
  };
}

// The headers of a playback (X-Nvr-Start, X-Nvr-Gaps) without its body. The ticket URL is asked again for one
// byte: with Range support that joins the video's session. A server that allows one request per ticket answers
// 401 ticket_used; then the same window is asked with the person's own credentials (one more audited start) and
// the body is dropped as soon as the headers are in.
async function playbackHeaders(url) {
  const ctl = new AbortController();
  try {
    let resp = await fetch(url, { headers: { Range: "bytes=0-0" }, credentials: "same-origin", signal: ctl.signal });
    if (resp.status === 401) {
      const bare = new URL(url, location.href);
      bare.searchParams.delete("ticket");
      resp = await fetch(bare.pathname + bare.search, { headers: { ...api.authHeaders(), Range: "bytes=0-0" }, credentials: "same-origin", signal: ctl.signal });
    }
    if (!resp.ok) throw await failureOf(resp);
    return parseInfo(resp);
  } finally {
    ctl.abort();
  }
}

async function failureOf(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return new api.ApiError(resp.status, body.error.code, body.error.message);
  } catch (_) {
    /* not JSON */
  }
  return new api.ApiError(resp.status, `http_${resp.status}`, `${resp.status} ${resp.statusText}`);
}

function once(target, ok, bad = "error") {
  return new Promise((resolve, reject) => {
    const done = (ev) => {
      target.removeEventListener(ok, done);
      target.removeEventListener(bad, fail);
      resolve(ev);
    };
    const fail = (ev) => {
      target.removeEventListener(ok, done);
      target.removeEventListener(bad, fail);
      reject(ev);
    };
    target.addEventListener(ok, done);
    target.addEventListener(bad, fail);
  });
}

// Whether the video can show media time ``sec`` without a new request: inside its seekable ranges, or at most a
// couple of seconds past what it has buffered (the rest arrives on the running request).
function reachable(video, sec) {
  const within = (r, slack) => {
    for (let i = 0; i < r.length; i++) if (sec >= r.start(i) && sec <= r.end(i) + slack) return true;
    return false;
  };
  return within(video.seekable, 0) || within(video.buffered, 2);
}

function initialWindow() {
  const q = hashQuery();
  const end = q.get("end") ? ms(q.get("end")) : Date.now();
  const start = q.get("start") ? ms(q.get("start")) : end - DAY_MS;
  if (Number.isNaN(start) || Number.isNaN(end) || end <= start) return { start: Date.now() - DAY_MS, end: Date.now() };
  return { start, end };
}

function pct(x, view) {
  return ((x - view.start) / (view.end - view.start)) * 100;
}

function bar(cls, a, b, view, title, data = {}) {
  const left = Math.max(0, pct(a, view));
  const right = Math.min(100, pct(b, view));
  return h("div", { class: cls, title, style: null, dataset: data, "data-left": left, "data-width": Math.max(0.2, right - left) });
}

// style="" attributes are blocked by the page's CSP (style-src 'self'); positions are set through the CSSOM,
// which the policy allows.
function place(el) {
  el.style.left = `${el.dataset.left}%`;
  el.style.width = `${el.dataset.width}%`;
  return el;
}

route("/cameras/:id", {
  roles: FOOTAGE_ROLES,
  async render(main, params, me, isCurrent) {
    const id = params.id;
    const cam = await api.get(`/cameras/${enc(id)}`);
    if (!isCurrent()) return;
    const view = initialWindow();
    let loaded = null; // {url, info, winStart, winEnd}
    let startAtMoment = false;

    const startInput = h("input", { type: "datetime-local", id: "view-start", step: 1, value: isoToLocalInput(toIso(view.start)) });
    const endInput = h("input", { type: "datetime-local", id: "view-end", step: 1, value: isoToLocalInput(toIso(view.end)) });
    const timeline = h("div", { class: "timeline", id: "timeline", role: "slider", "aria-label": t("camera.timeline") });
    const axis = h("div", { class: "timeline-axis" });
    const summary = h("p", { class: "muted", id: "timeline-summary" });
    const purpose = h("input", { id: "purpose", name: "purpose", value: sessionStorage.getItem(purposeKey(me)) || "", placeholder: t("camera.purpose") });
    purpose.addEventListener("change", () => sessionStorage.setItem(purposeKey(me), purpose.value.trim()));
    const video = h("video", { id: "player", controls: true, muted: true, playsinline: true, preload: "auto" });
    video.muted = true;
    const wall = h("output", { id: "wall", dataset: { wall: "" } }, "—");
    const loadedText = h("span", { class: "muted", id: "loaded" });
    const cursor = h("div", { class: "cursor", hidden: true });
    onLeave(() => {
      video.removeAttribute("src");
      video.load();
    });

    async function drawTimeline() {
      const rec = await api.get(`/cameras/${enc(id)}/recordings`, { start: toIso(view.start), end: toIso(view.end) });
      clear(timeline);
      for (const r of rec.runs) {
        const tip = t("camera.run", { start: fmtTime(r.start), end: fmtTime(r.end), segments: r.segments });
        timeline.append(place(bar("run", ms(r.start), ms(r.end), view, tip)));
      }
      for (const g of rec.gaps) {
        const tip = t("camera.gap", { start: fmtTime(g.start), end: fmtTime(g.end), reason: g.reason });
        timeline.append(place(bar("gap", ms(g.start), ms(g.end), view, tip, { reason: g.reason })));
      }
      for (const hd of rec.holds || []) {
        const a = hd.start ? ms(hd.start) : view.start;
        const b = hd.end ? ms(hd.end) : view.end;
        timeline.append(place(bar("hold", a, b, view, t("camera.hold", { case_ref: hd.case_ref || "", title: hd.title || "" }))));
      }
      timeline.append(cursor);
      clear(axis).append(
        ...[0, 0.25, 0.5, 0.75, 1].map((f) => h("span", {}, fmtTime(toIso(view.start + f * (view.end - view.start))))),
      );
      summary.textContent = t("camera.summary", { runs: rec.runs.length, gaps: rec.gaps.length, holds: (rec.holds || []).length, segments: rec.segments });
      startInput.value = isoToLocalInput(toIso(view.start));
      endInput.value = isoToLocalInput(toIso(view.end));
      const q = `start=${enc(toIso(view.start))}&end=${enc(toIso(view.end))}`;
      history.replaceState(null, "", `#/cameras/${enc(id)}?${q}`);
      showCursor();
    }

    function setView(start, end) {
      view.start = Math.round(start);
      view.end = Math.round(end);
      return guarded(drawTimeline);
    }

    function zoom(factor) {
      const mid = loaded && !video.paused ? currentWall() : (view.start + view.end) / 2;
      const half = ((view.end - view.start) * factor) / 2;
      return setView(mid - half, mid + half);
    }

    function currentWall() {
      return loaded ? mediaToWall(loaded.info, video.currentTime * 1000) : null;
    }

    function showCursor() {
      const w = currentWall();
      if (w === null || w < view.start || w > view.end) {
        cursor.hidden = true;
        return;
      }
      cursor.hidden = false;
      cursor.style.left = `${pct(w, view)}%`;
    }

    function showWall() {
      const w = currentWall();
      if (w === null || Number.isNaN(w)) return;
      const iso = new Date(Math.round(w)).toISOString();
      wall.dataset.wall = iso;
      wall.title = `${iso} (UTC)`;
      wall.textContent = fmtTime(iso);
      showCursor();
    }
    video.addEventListener("timeupdate", showWall);
    video.addEventListener("seeked", showWall);

    async function ticketFor(T, before) {
      let after = AFTER_MS;
      for (;;) {
        const start = T - before;
        const end = Math.max(T + 1000, Math.min(T + after, Date.now()));
        try {
          const tk = await api.post(`/cameras/${enc(id)}/playback-tickets`, { start: toIso(start), end: toIso(end), purpose: purpose.value.trim() });
          return { ...tk, winStart: start, winEnd: end };
        } catch (e) {
          if (e.code !== "window_too_long" || after < 2000) throw e;
          before = Math.floor(before / 2);
          after = Math.floor(after / 2);
        }
      }
    }

    async function loadAt(T, before) {
      const tk = await ticketFor(T, before);
      loaded = null;
      video.src = tk.url;
      try {
        await once(video, "loadedmetadata");
      } catch (_) {
        // The element says only "failed": ask the API what it refused (a grant suspended meanwhile, …).
        const probe = await fetch(tk.url, { headers: { Range: "bytes=0-0" }, credentials: "same-origin" });
        throw probe.ok ? new api.ApiError(0, "media_error", t("camera.no_media")) : await failureOf(probe);
      }
      const info = await playbackHeaders(tk.url);
      loaded = { url: tk.url, info, winStart: tk.winStart, winEnd: tk.winEnd };
      loadedText.textContent = t("camera.loaded", { start: fmtTime(toIso(info.startMs)), end: fmtTime(toIso(info.endMs)) });
      loadedText.dataset.tickets = String(Number(loadedText.dataset.tickets || 0) + 1);
    }

    async function playAt(T) {
      if (!purpose.value.trim()) {
        purpose.focus();
        throw new api.ApiError(0, "purpose_required", t("camera.purpose_needed"));
      }
      sessionStorage.setItem(purposeKey(me), purpose.value.trim());
      const inside = loaded && T >= loaded.info.startMs && T < loaded.info.endMs;
      if (!inside || !reachable(video, wallToMedia(loaded.info, T).media / 1000)) {
        await loadAt(T, startAtMoment ? 0 : BEFORE_MS);
        if (!loaded.info.ranges && !reachable(video, wallToMedia(loaded.info, T).media / 1000)) {
          // A server without byte ranges: the video seeks only within what it buffered, so windows start at the
          // moment clicked from now on (the stream still begins at the keyframe at or before it).
          startAtMoment = true;
          await loadAt(T, 0);
        }
      }
      const { media, inGap } = wallToMedia(loaded.info, T);
      if (inGap) showNotice(t("camera.in_gap"));
      video.currentTime = media / 1000;
      await once(video, "seeked").catch(() => {});
      showWall();
      await video.play().catch(() => {
        /* autoplay refused: the controls are there */
      });
    }

    timeline.addEventListener("click", (ev) => {
      const rect = timeline.getBoundingClientRect();
      const T = view.start + ((ev.clientX - rect.left) / rect.width) * (view.end - view.start);
      guarded(() => playAt(Math.round(T)));
    });

    const span = () => view.end - view.start;
    main.append(
      h("h1", {}, `${cam.name} (${cam.id}) `, stateCell(cam.state)),
      section(
        t("camera.timeline"),
        h(
          "div",
          { class: "row" },
          h("label", { class: "field" }, h("span", {}, t("common.start")), startInput),
          h("label", { class: "field" }, h("span", {}, t("common.end")), endInput),
          button(t("camera.show"), () => setView(ms(localInputToIso(startInput.value)), ms(localInputToIso(endInput.value))), { id: "view-show" }),
          button(t("camera.earlier"), () => setView(view.start - span() / 2, view.end - span() / 2), { class: "secondary", id: "view-earlier" }),
          button(t("camera.later"), () => setView(view.start + span() / 2, view.end + span() / 2), { class: "secondary", id: "view-later" }),
          button(t("camera.zoom_in"), () => zoom(0.5), { class: "secondary", id: "zoom-in" }),
          button(t("camera.zoom_out"), () => zoom(2), { class: "secondary", id: "zoom-out" }),
          button(t("camera.last_24h"), () => setView(Date.now() - DAY_MS, Date.now()), { class: "secondary", id: "view-24h" }),
        ),
        timeline,
        axis,
        h(
          "div",
          { class: "legend" },
          h("span", {}, h("i", { class: "swatch-run" }), t("camera.legend_run")),
          h("span", {}, h("i", { class: "swatch-gap" }), t("camera.legend_gap")),
          h("span", {}, h("i", { class: "swatch-hold" }), t("camera.legend_hold")),
          h("span", {}, h("i", { class: "swatch-cursor" }), t("camera.legend_cursor")),
        ),
        summary,
        h("p", { class: "muted" }, t("camera.click_to_play")),
      ),
      section(
        t("camera.wall"),
        h(
          "div",
          { class: "row" },
          h("label", { class: "field purpose" }, h("span", {}, t("camera.purpose")), purpose),
          h("a", { class: "button", id: "go-live", href: `#/cameras/${enc(id)}/live` }, t("camera.live")),
        ),
        h("div", { class: "row player" }, video, h("div", {}, h("p", {}, `${t("camera.wall")}: `, wall), h("p", {}, loadedText))),
      ),
    );
    await drawTimeline();
  },
});

// --- live view ---------------------------------------------------------------------------------------------------

// One live session: fetch() the chunked fMP4 (init segment, then fragments from a keyframe) and append every chunk
// to a SourceBuffer. Resolves when the server ends the stream; rejects with the API's error when it refuses.
async function liveSession(video, id, purpose, signal, onPlaying) {
  const resp = await api.call("GET", `/cameras/${enc(id)}/live`, { params: { purpose }, raw: true, signal });
  const codecs = resp.headers.get("X-Nvr-Codecs") || "avc1.64001f";
  const mime = `video/mp4; codecs="${codecs}"`;
  if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
    resp.body.cancel().catch(() => {});
    throw new api.ApiError(0, "live_unsupported", t("live.unsupported", { codecs }));
  }
  const source = new MediaSource();
  const old = video.src;
  video.src = URL.createObjectURL(source);
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  await once(source, "sourceopen");
  const buffer = source.addSourceBuffer(mime);
  buffer.mode = "segments";
  const reader = resp.body.getReader();
  let started = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    buffer.appendBuffer(value);
    await once(buffer, "updateend");
    if (!buffer.buffered.length) continue;
    const first = buffer.buffered.start(0);
    const end = buffer.buffered.end(buffer.buffered.length - 1);
    // A live stream's first fragment is not at media time 0; stay near the live edge, and drop what is more than
    // a minute old so a long watch does not fill the browser's memory.
    if (video.currentTime < first || end - video.currentTime > 3) video.currentTime = Math.max(first, end - 0.5);
    if (end - first > 90) {
      buffer.remove(first, end - 60);
      await once(buffer, "updateend");
    }
    if (!started) {
      started = true;
      video.play().catch(() => {});
      onPlaying();
    }
  }
}

route("/cameras/:id/live", {
  roles: FOOTAGE_ROLES,
  async render(main, params, me, isCurrent) {
    const id = params.id;
    const cam = await api.get(`/cameras/${enc(id)}`);
    if (!isCurrent()) return;
    const ctl = new AbortController();
    const video = h("video", { id: "live", controls: true, muted: true, playsinline: true, autoplay: true });
    video.muted = true;
    const state = h("p", { id: "live-state", class: "muted", dataset: { state: "connecting" } }, t("live.connecting"));
    const purposeInput = h("input", { id: "purpose", value: sessionStorage.getItem(purposeKey(me)) || "" });
    purposeInput.addEventListener("change", () => sessionStorage.setItem(purposeKey(me), purposeInput.value.trim()));
    const setState = (s, text) => {
      state.dataset.state = s;
      state.textContent = text;
      if (s === "ended" && !state.dataset.endedAt) state.dataset.endedAt = String(Date.now());
    };
    onLeave(() => {
      ctl.abort();
      video.removeAttribute("src");
      video.load();
    });

    // A stream the server ended (a camera that dropped its connection, a suspended grant) is asked for once more
    // at once: a camera back online plays on, and a refusal says why in the banner (grant_suspended, …). Three
    // short sessions in a row stop the retries; the Reconnect button starts again.
    async function watch() {
      const purpose = purposeInput.value.trim();
      if (!purpose) throw new api.ApiError(0, "purpose_required", t("camera.purpose_needed"));
      sessionStorage.setItem(purposeKey(me), purpose);
      delete state.dataset.endedAt;
      let short = 0;
      while (short < 3) {
        if (state.dataset.state !== "ended") setState("connecting", t("live.connecting"));
        const began = Date.now();
        try {
          await liveSession(video, id, purpose, ctl.signal, () => {
            delete state.dataset.endedAt;
            setState("playing", t("live.playing"));
          });
        } catch (e) {
          if (e.name === "AbortError" || ctl.signal.aborted) return;
          setState("ended", t("live.ended"));
          throw e;
        }
        if (ctl.signal.aborted) return;
        setState("ended", t("live.ended"));
        short = Date.now() - began > 10_000 ? 0 : short + 1;
      }
    }

    main.append(
      h("h1", {}, t("live.title", { camera: `${cam.name} (${cam.id})` })),
      h(
        "div",
        { class: "row" },
        h("label", { class: "field purpose" }, h("span", {}, t("camera.purpose")), purposeInput),
        button(t("live.reconnect"), () => (state.dataset.state === "ended" ? watch() : null), { class: "secondary", id: "live-reconnect" }),
        h("a", { href: `#/cameras/${enc(id)}` }, t("live.back")),
      ),
      video,
      state,
    );
    guarded(watch);
  },
});

// --- access requests ---------------------------------------------------------------------------------------------
const ACTIONS = () => ["live", "playback", "export"].map((a) => [a, t(`action.${a}`)]);

route("/requests", {
  nav: { key: "nav.requests" },
  roles: ["officer"],
  async render(main, params, me, isCurrent) {
    const list = h("div", { id: "my-requests" });
    async function refresh() {
      const out = await api.get("/access-requests");
      if (!isCurrent()) return;
      clear(list).append(
        table(
          [
            { label: "#", value: (r) => String(r.id) },
            { label: t("common.cameras"), value: (r) => r.cameras.join(", ") },
            { label: t("requests.actions"), value: (r) => r.actions.map((a) => t(`action.${a}`)).join(", ") },
            { label: t("requests.window"), value: (r) => windowText(r.window) },
            { label: t("common.purpose"), value: (r) => r.purpose },
            { label: t("common.case_ref"), value: (r) => r.case_ref },
            { label: t("common.state"), value: (r) => stateCell(r.state) },
            { label: t("requests.decision"), value: (r) => r.decision_reason || "" },
            {
              label: t("common.actions"),
              value: (r) =>
                r.state === "pending"
                  ? button(t("requests.withdraw"), async () => {
                      await api.post(`/access-requests/${r.id}/withdraw`);
                      await refresh();
                    }, { class: "secondary" })
                  : "",
            },
          ],
          out.requests.slice().reverse(),
          { id: "requests-table" },
        ),
      );
    }
    const now = Date.now();
    main.append(
      h("h1", {}, t("requests.title")),
      section(
        t("requests.new"),
        form(
          [
            { name: "cameras", label: t("requests.cameras"), required: true },
            { name: "actions", label: t("requests.actions"), type: "checkboxes", options: ACTIONS(), value: ["playback"] },
            { name: "start", label: t("requests.window_start"), type: "datetime-local", required: true, value: minuteInput(now - DAY_MS) },
            { name: "end", label: t("requests.window_end"), type: "datetime-local", required: true, value: minuteInput(now) },
            { name: "valid_until", label: t("requests.valid_until"), type: "datetime-local", required: true, value: minuteInput(now + 30 * DAY_MS) },
            { name: "purpose", label: t("common.purpose"), type: "textarea", required: true },
            { name: "case_ref", label: t("common.case_ref"), required: true },
            { name: "max_streams", label: t("requests.max_streams"), type: "number", value: "2" },
          ],
          async (v) => {
            const r = await api.post("/access-requests", {
              cameras: splitIds(v.cameras),
              actions: v.actions,
              window: { start: localInputToIso(v.start), end: localInputToIso(v.end) },
              valid_until: localInputToIso(v.valid_until),
              purpose: v.purpose,
              case_ref: v.case_ref,
              max_streams: Number(v.max_streams || 2),
            });
            showNotice(t("requests.filed", { id: r.id }));
            await refresh();
          },
          t("common.submit"),
          { id: "request-form" },
        ),
      ),
      section(t("requests.mine"), list),
    );
    await refresh();
  },
});

// --- exports -----------------------------------------------------------------------------------------------------
function jobCell(job) {
  if (!job) return "—";
  const bar = h("span", { class: "progress" }, h("div", {}));
  bar.firstChild.style.width = `${job.percent}%`;
  return h(
    "span",
    { class: "job", dataset: { job: job.state, percent: job.percent } },
    stateCell(job.state),
    " ",
    bar,
    ` ${job.percent}% (${bytes(job.bytes_done)} / ${bytes(job.bytes_total)})`,
    job.error ? h("div", { class: "state-failed" }, `${job.error.code}: ${job.error.message}`) : "",
    job.state === "done" ? h("div", { class: "muted" }, t("exports.downloads", { n: job.downloads })) : "",
  );
}

function exportActions(x, me, refresh, destinations) {
  const mine = [x.requester && x.requester.id, x.cosigner && x.cosigner.id].includes(me.id);
  const job = x.job;
  const out = [];
  const act = (label, path, attrs) =>
    button(label, async () => {
      await api.post(`/exports/${x.id}/${path}`);
      await refresh();
    }, attrs);
  if (x.state === "pending_cosign" && (!x.requester || x.requester.id !== me.id)) out.push(act(t("exports.cosign"), "cosign", { class: "cosign" }));
  if (mine && x.state === "approved" && (!job || ["failed", "cancelled"].includes(job.state))) out.push(act(t("exports.start_job"), "job", { class: "start-job" }));
  if (mine && job && ["queued", "running"].includes(job.state)) out.push(act(t("exports.cancel_job"), "job/cancel", { class: "secondary cancel-job" }));
  if (x.requester && x.requester.id === me.id && ["pending_cosign", "pending_approval", "approved"].includes(x.state) && !(job && job.state === "done"))
    out.push(act(t("exports.withdraw"), "withdraw", { class: "secondary" }));
  if (mine && job && job.state === "done") {
    const dest = h("input", { class: "download-destination", value: destinations.get(x.id) ?? x.destination, "aria-label": t("exports.download_to") });
    dest.addEventListener("input", () => destinations.set(x.id, dest.value));
    const result = h("span", { class: "download-result" });
    out.push(
      h(
        "span",
        { class: "download" },
        h("label", {}, `${t("exports.download_to")}: `, dest),
        button(t("exports.download"), async () => {
          const destination = dest.value.trim() || x.destination;
          const got = await api.download(`/exports/${x.id}/bundle`, { destination }, `export-${x.id}.zip`);
          result.dataset.bytes = String(got.bytes);
          result.textContent = t("exports.downloaded", { name: got.name, size: bytes(got.bytes), destination });
        }, { class: "download-button" }),
        result,
      ),
    );
  }
  return h("span", { class: "actions" }, out);
}

route("/exports", {
  nav: { key: "nav.exports" },
  roles: ["officer"],
  async render(main, params, me, isCurrent) {
    const list = h("div", { id: "exports" });
    const destinations = new Map();
    let last = "";
    let timer = null;
    onLeave(() => clearTimeout(timer));

    function rows(xs) {
      return table(
        [
          { label: "#", value: (x) => String(x.id) },
          { label: t("common.cameras"), value: (x) => x.cameras.join(", ") },
          { label: t("requests.window"), value: (x) => windowText(x.window) },
          { label: t("common.case_ref"), value: (x) => x.case_ref },
          { label: t("exports.destination"), value: (x) => h("span", { class: "destination" }, x.destination) },
          { label: t("exports.requester"), value: (x) => personName(x.requester) },
          { label: t("exports.cosigner"), value: (x) => personName(x.cosigner) },
          { label: t("common.state"), value: (x) => stateCell(x.state) },
          {
            label: t("exports.decisions"),
            value: (x) => (x.decisions || []).map((d) => h("div", {}, `${d.unit}: ${d.decision} — ${d.reason} (${personName(d.approver)})`)),
          },
          { label: t("exports.job"), value: (x) => jobCell(x.job) },
          { label: t("common.actions"), value: (x) => exportActions(x, me, refresh, destinations) },
        ],
        xs,
        { id: "exports-table" },
      );
    }

    // Re-drawn only when something changed, so a destination being typed survives the progress poll.
    async function refresh() {
      clearTimeout(timer);
      const out = await api.get("/exports");
      if (!isCurrent()) return;
      const xs = out.exports.slice().sort((a, b) => b.id - a.id);
      const text = JSON.stringify(xs);
      if (text !== last) {
        last = text;
        clear(list).append(rows(xs));
        list.querySelectorAll("tr").forEach((tr, i) => i > 0 && (tr.dataset.export = String(xs[i - 1].id)));
      }
      if (xs.some((x) => x.job && ["queued", "running"].includes(x.job.state))) {
        timer = setTimeout(() => guarded(refresh), 1000);
      }
    }

    const now = Date.now();
    main.append(
      h("h1", {}, t("exports.title")),
      section(
        t("exports.new"),
        form(
          [
            { name: "cameras", label: t("requests.cameras"), required: true },
            { name: "start", label: t("common.start"), type: "datetime-local", required: true, value: minuteInput(now - HOUR_MS) },
            { name: "end", label: t("common.end"), type: "datetime-local", required: true, value: minuteInput(now) },
            { name: "purpose", label: t("common.purpose"), type: "textarea", required: true },
            { name: "case_ref", label: t("common.case_ref"), required: true },
            { name: "legal_basis", label: t("exports.legal_basis"), required: true },
            { name: "recipient", label: t("exports.recipient"), required: true },
            { name: "destination", label: t("exports.destination"), required: true },
          ],
          async (v) => {
            const x = await api.post("/exports", {
              cameras: splitIds(v.cameras),
              start: localInputToIso(v.start),
              end: localInputToIso(v.end),
              purpose: v.purpose,
              case_ref: v.case_ref,
              legal_basis: v.legal_basis,
              recipient: v.recipient,
              destination: v.destination,
            });
            showNotice(t("exports.filed", { id: x.id }));
            await refresh();
          },
          t("common.submit"),
          { id: "export-form" },
        ),
      ),
      section(t("exports.list"), h("div", { class: "row" }, button(t("common.refresh"), () => refresh(), { class: "secondary", id: "exports-refresh" })), list),
    );
    await refresh();
  },
});

