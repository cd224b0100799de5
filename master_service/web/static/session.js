// Who the dashboard talks for: the logged-in user and role from GET /api/me, the CSRF
// token every write sends back, and the header's "name · Log out". A viewer's page shows no
// buttons that change anything (the API refuses them anyway).
import { $, h } from "/static/dom.js";

const CSRF_COOKIE = "picluster_csrf";

/** The signed-in user, once known: { user, role, via, login_required }; role "admin" on an open master. */
export const session = { user: null, role: null, via: null, loginRequired: false };

function cookie(name) {
  const prefix = `${name}=`;
  const found = document.cookie.split("; ").find((c) => c.startsWith(prefix));
  return found ? decodeURIComponent(found.slice(prefix.length)) : null;
}

/** Headers for a request: X-CSRF-Token on writes, when a session holds one. */
export function withCsrf(init = {}) {
  const method = (init.method || "GET").toUpperCase();
  const token = cookie(CSRF_COOKIE);
  if (method === "GET" || method === "HEAD" || !token) return init;
  return { ...init, headers: { ...(init.headers || {}), "X-CSRF-Token": token } };
}

/** A session that ended (logged out elsewhere, user removed): back to the login page. */
export function toLogin() {
  const next = location.pathname + location.hash;
  location.assign(`/login?next=${encodeURIComponent(next)}`);
}

/** True when the user may send commands, enroll nodes and change silences. */
export const canAct = () => session.role === "admin";

function renderWho() {
  const who = $("#who");
  if (!who || !session.user) return;
  if (session.via === "local") {
    // No login needed to look here, but writes need one (the master has an api_token).
    if (session.role !== "admin") {
      who.replaceChildren(h("a", { href: "/login", id: "login-link" }, "Log in to send commands"));
      who.hidden = false;
    }
    return;
  }
  const form = h("form", { method: "post", action: "/logout" },
    h("input", { type: "hidden", name: "csrf", value: cookie(CSRF_COOKIE) || "" }),
    h("button", { type: "submit", id: "logout" }, "Log out"));
  who.replaceChildren(h("span", { id: "who-name" }, `${session.user} (${session.role})`), form);
  who.hidden = false;
}

/** Ask the master who we are; sends the browser to /login when it needs one. */
export async function loadSession() {
  const res = await fetch("/api/me", { cache: "no-store" });
  if (res.status === 401) {
    toLogin();
    return new Promise(() => {}); // the page is going away
  }
  const me = res.ok ? await res.json() : { user: null, role: "viewer", login_required: true };
  session.user = me.user;
  session.role = me.role;
  session.via = me.via;
  session.loginRequired = me.login_required;
  document.body.dataset.role = me.role;
  renderWho();
  return session;
}
