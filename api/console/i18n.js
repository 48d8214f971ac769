// Simplified Chinese and English. Chinese when the browser asks for it first (navigator.languages), unless the user
// chose a language in the console (kept in localStorage). Each view module adds its own strings with add(), so
// the words live beside the screen that uses them; a key missing in one language falls back to English, then to
// the key itself (visible, never blank).
const LANG_KEY = "nvr.lang";
const dict = { en: {}, zh: {} };

export function add(strings) {
  for (const lang of Object.keys(dict)) Object.assign(dict[lang], strings[lang] || {});
}

export function browserLanguage(languages = navigator.languages || [navigator.language || "en"]) {
  for (const l of languages) {
    const low = String(l).toLowerCase();
    if (low.startsWith("zh")) return "zh";
    if (low.startsWith("en")) return "en";
  }
  return "en";
}

export function lang() {
  const chosen = localStorage.getItem(LANG_KEY);
  return chosen === "zh" || chosen === "en" ? chosen : browserLanguage();
}

export function setLang(value) {
  localStorage.setItem(LANG_KEY, value);
  document.documentElement.lang = value === "zh" ? "zh-CN" : "en";
}

// t("key", {n: 3}) → the string in the current language with {n} replaced.
export function t(key, params) {
  const l = lang();
  let s = dict[l][key] ?? dict.en[key] ?? key;
  if (params) for (const [k, v] of Object.entries(params)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

add({
  en: {
    "app.title": "Evidence archive",
    "app.lang": "中文",
    "app.logout": "Sign out",
    "app.loading": "Loading…",
    "app.error": "Error",
    "app.dismiss": "Dismiss",
    "app.not_found": "No such page.",
    "app.no_access": "Your roles do not include this screen.",
    "login.title": "Sign in",
    "login.username": "User name",
    "login.password": "Password",
    "login.submit": "Sign in",
    "login.oidc": "Sign in with the unit's identity platform",
    "login.or": "or, with a local account",
    "common.save": "Save",
    "common.cancel": "Cancel",
    "common.submit": "Submit",
    "common.refresh": "Refresh",
    "common.none": "Nothing here.",
    "common.reason": "Reason",
    "common.purpose": "Purpose",
    "common.case_ref": "Case reference",
    "common.camera": "Camera",
    "common.cameras": "Cameras",
    "common.start": "Start",
    "common.end": "End",
    "common.state": "State",
    "common.user": "User",
    "common.created": "Created",
    "common.actions": "Actions",
    "common.approve": "Approve",
    "common.reject": "Reject",
    "common.time_utc": "UTC",
    "common.done": "Done.",
  },
  zh: {
    "app.title": "证据录像库",
    "app.lang": "English",
    "app.logout": "退出登录",
    "app.loading": "加载中…",
    "app.error": "错误",
    "app.dismiss": "关闭",
    "app.not_found": "没有这个页面。",
    "app.no_access": "您的角色不包括此页面。",
    "login.title": "登录",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.oidc": "通过单位统一身份认证平台登录",
    "login.or": "或使用本地账号",
    "common.save": "保存",
    "common.cancel": "取消",
    "common.submit": "提交",
    "common.refresh": "刷新",
    "common.none": "暂无内容。",
    "common.reason": "理由",
    "common.purpose": "用途",
    "common.case_ref": "案件编号",
    "common.camera": "摄像机",
    "common.cameras": "摄像机",
    "common.start": "开始",
    "common.end": "结束",
    "common.state": "状态",
    "common.user": "用户",
    "common.created": "创建时间",
    "common.actions": "操作",
    "common.approve": "批准",
    "common.reject": "驳回",
    "common.time_utc": "协调世界时",
    "common.done": "已完成。",
  },
});
