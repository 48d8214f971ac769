// Screens register themselves here: a hash path pattern ("#/cameras/:id"), who sees it in the navigation, and a
// render(main, params, me) function. The server decides what anyone may do; the roles here only choose which
// screens to offer (a screen opened by URL without the role still gets the API's refusal, shown as an error).
const routes = [];

export function route(pattern, spec) {
  const names = [];
  const re = new RegExp(
    "^" +
      pattern.replace(/:[a-z_]+/g, (m) => {
        names.push(m.slice(1));
        return "([^/]+)";
      }) +
      "$",
  );
  routes.push({ pattern, re, names, ...spec });
}

export function match(path) {
  for (const r of routes) {
    const m = path.match(r.re);
    if (m) {
      const params = {};
      r.names.forEach((n, i) => (params[n] = decodeURIComponent(m[i + 1])));
      return { route: r, params };
    }
  }
  return null;
}

export function navigation(me) {
  return routes.filter((r) => r.nav && allowed(r, me));
}

export function allowed(r, me) {
  if (!r.roles) return true;
  return (me.roles || []).some((role) => r.roles.includes(role));
}

export function go(path) {
  if (location.hash !== `#${path}`) location.hash = path;
}

// Query parameters inside the hash ("#/audit?user=3").
export function hashQuery() {
  const i = location.hash.indexOf("?");
  return new URLSearchParams(i >= 0 ? location.hash.slice(i + 1) : "");
}

// Things a screen must stop when the user leaves it (a live stream, a progress poll): run before the next screen.
const leaving = [];

export function onLeave(fn) {
  leaving.push(fn);
}

export function leave() {
  while (leaving.length) {
    try {
      leaving.pop()();
    } catch (_) {
      /* a cleanup failing must not block the next screen */
    }
  }
}
