// The console: sign-in, the navigation each role gets, and the screens (views/*.js), all on the public API.
import * as api from "./api.js";
import { add, lang, setLang, t } from "./i18n.js";
import { allowed, go, leave, match, navigation } from "./router.js";
import { clear, form, h, hideBanner, showError } from "./ui.js";
import "./views/officer.js";
import "./views/approver.js";
import "./views/holds.js";
import "./views/admin.js";
import "./views/auditor.js";

let me = null;

// A failure nobody caught still reaches the user: never a blank page.
window.addEventListener("error", (ev) => showError(ev.error || { message: ev.message }));
window.addEventListener("unhandledrejection", (ev) => showError(ev.reason));

add({ en: { "nav.home": "Home" }, zh: { "nav.home": "首页" } });

function header() {
  const top = clear(document.getElementById("top"));
  const brand = h("a", { href: "#/", class: "brand" }, t("app.title"));
  const langButton = h(
    "button",
    {
      type: "button",
      class: "link",
      id: "lang",
      onclick: () => {
        setLang(lang() === "zh" ? "en" : "zh");
        render();
      },
    },
    t("app.lang"),
  );
  if (!me) {
    top.append(brand, h("span", { class: "spacer" }), langButton);
    return;
  }
  const path = location.hash.slice(1).split("?")[0];
  const links = navigation(me).map((r) =>
    h("a", { href: `#${r.nav.path || r.pattern}`, class: path.startsWith(r.nav.path || r.pattern) ? "active" : "", dataset: { nav: r.nav.key } }, t(r.nav.key)),
  );
  top.append(
    brand,
    h("nav", {}, links),
    h("span", { class: "spacer" }),
    h("span", { class: "who", id: "who" }, `${me.full_name} (${me.username}) · ${(me.roles || []).join(", ")}`),
    langButton,
    h("button", { type: "button", class: "link", id: "logout", onclick: logout }, t("app.logout")),
  );
}

async function logout() {
  try {
    if (api.token()) await api.post("/auth/logout");
  } catch (_) {
    /* the token may already be gone: signing out locally is what matters */
  }
  api.setToken(null);
  me = null;
  go("/");
  render();
}

async function loginScreen(main) {
  main.append(h("h1", {}, t("login.title")));
  const methods = await api.get("/auth/methods").catch(() => ({ password: true, oidc: false }));
  if (methods.oidc) {
    main.append(
      h("p", {}, h("a", { href: `${api.BASE}/auth/oidc/login?return_to=${encodeURIComponent("/")}`, id: "oidc-login", class: "button" }, t("login.oidc"))),
      h("p", { class: "muted" }, t("login.or")),
    );
  }
  main.append(
    form(
      [
        { name: "username", label: t("login.username"), required: true, autocomplete: "username" },
        { name: "password", label: t("login.password"), type: "password", required: true, autocomplete: "current-password" },
      ],
      async (v) => {
        const out = await api.post("/auth/login", { username: v.username, password: v.password });
        api.setToken(out.token);
        await loadMe();
        hideBanner();
        render();
      },
      t("login.submit"),
      { id: "login-form" },
    ),
  );
}

async function loadMe() {
  try {
    me = await api.get("/me");
  } catch (e) {
    me = null;
    if (e.status !== 401) throw e;
    api.setToken(null);
  }
}

let renderCount = 0;

export async function render() {
  leave();
  document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en";
  document.title = t("app.title");
  header();
  const main = clear(document.getElementById("main"));
  const mine = ++renderCount;
  if (!me) {
    await loginScreen(main);
    return;
  }
  const path = location.hash.slice(1).split("?")[0] || "/";
  let found = match(path);
  if (path === "/") {
    const first = navigation(me)[0];
    if (first) {
      go(first.nav.path || first.pattern);
      return;
    }
  }
  if (!found) {
    main.append(h("p", { class: "empty" }, t("app.not_found")));
    return;
  }
  if (!allowed(found.route, me)) {
    main.append(h("p", { class: "empty" }, t("app.no_access")));
    return;
  }
  main.dataset.screen = found.route.pattern;
  try {
    await found.route.render(main, found.params, me, () => mine === renderCount);
  } catch (e) {
    if (mine === renderCount) {
      showError(e);
      if (!main.firstChild) main.append(h("p", { class: "empty" }, `${e.code || ""} ${e.message || e}`));
    }
  }
}

window.addEventListener("hashchange", () => {
  hideBanner();
  render();
});

(async () => {
  try {
    await loadMe();
  } catch (e) {
    showError(e);
  }
  render();
})();
