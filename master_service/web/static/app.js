// picluster dashboard: polls the master's JSON API and keeps the page in step with it.
// Views: the overview ("#/"), a node page ("#/node/<id>") and the alerts ("#/alerts"). No
// framework; DOM nodes are created once and updated in place, so values change without the
// layout jumping.

import * as fmt from "/static/format.js";
import { drawSparkline, renderChart } from "/static/chart.js";
import { $, fillWith, h } from "/static/dom.js";
import { renderNodeActions, renderSendBox, setupActions } from "/static/actions.js";
import { loadSession, session, toLogin, withCsrf } from "/static/session.js";

const POLL_MS = 2000;          // nodes + cluster; stale/offline must show within seconds
const SPARK_MS = 30000;        // sparklines change slowly; no need to hit history every poll
const SPARK_WINDOW_S = 900;
const SPARK_STEP_S = 10;       // 90 points: a sparkline needs no more
const CHART_POINTS = 300;
const REQUEST_TIMEOUT_MS = 5000;
const STATE_LABEL = { online: "Online", stale: "Stale", offline: "Offline", unknown: "Unknown" };

const app = {
  catalog: null,         // the metrics the master knows: GET /api/catalog/metrics
  nodes: new Map(),      // node id -> latest NodeView
  cluster: null,
  clockOffset: 0,        // server clock minus ours: "ago" texts use the server's notion of now
  lastOk: null,          // server time of the last successful poll
  failures: 0,
  alerts: null,          // GET /api/alerts; null while the master has none to give (404, error)
  alertsError: null,     // why not, for the Alerts page
  tagFilter: [],         // the overview shows nodes having all of these (from "#/?tag=...")
};

const serverNow = () => Date.now() / 1000 + app.clockOffset;

/** The API's error sentence (`{"detail": "..."}`), or a list of validation messages. */
function httpError(res, body) {
  const detail = body?.detail;
  const text = Array.isArray(detail) ? detail.map((d) => d?.msg ?? String(d)).join("; ") : detail;
  return new Error(`HTTP ${res.status}${text ? `: ${text}` : ""}`);
}

/** GET (or, with `init`, any request) and return the JSON body; errors say what went wrong. */
async function getJSON(path, init = {}) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), REQUEST_TIMEOUT_MS);
  try {
    const res = await fetch(path, withCsrf({ signal: ctl.signal, cache: "no-store", ...init }));
    if (res.status === 401 && session.loginRequired) toLogin(); // the session ended
    const body = await res.json().catch(() => null);
    if (!res.ok) throw httpError(res, body);
    return body;
  } catch (err) {
    if (err.name === "AbortError") throw new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`);
    if (err instanceof TypeError) throw new Error("master unreachable");
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- polling

async function poll() {
  try {
    // The list of metrics comes from the master (one table there), fetched until it arrives.
    if (!app.catalog) setCatalog(await getJSON("/api/catalog/metrics"));
    const [nodes, cluster] = await Promise.all([
      getJSON("/api/nodes"), getJSON("/api/cluster"), loadAlerts(),
    ]);
    if (page.alerts) await loadAlertPage();
    app.clockOffset = nodes.generated_at - Date.now() / 1000;
    app.lastOk = nodes.generated_at;
    app.cluster = cluster;
    app.nodes = new Map(nodes.nodes.map((n) => [n.node, n]));
    app.failures = 0;
    setConnection(true);
    render();
  } catch (err) {
    app.failures++;
    setConnection(false, err);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function setConnection(ok, err) {
  document.body.dataset.connection = ok ? "ok" : "lost";
  const banner = $("#banner");
  if (ok) { banner.hidden = true; return; }
  // One failed poll can be a blip; say so only after the second in a row.
  if (app.failures < 2 && app.lastOk !== null) return;
  const since = app.lastOk ? ` Values shown are from ${fmt.clock(app.lastOk)}.` : "";
  banner.textContent = `Connection to the master lost (${err?.message || "no answer"}). Retrying every ${POLL_MS / 1000} s…${since}`;
  banner.hidden = false;
}

/** "Updated 14:02:11 · 3 s ago", refreshed every second so a frozen page is obvious. */
function tickUpdated() {
  const text = $("#updated-text");
  if (app.lastOk === null) return;
  const age = serverNow() - app.lastOk;
  text.textContent = `Updated ${fmt.clock(app.lastOk)}${age >= 5 ? ` · ${fmt.ago(age)}` : ""}`;
}

// ---------------------------------------------------------------- the metric catalog

/** Formatters named by the catalog's `dashboard.format`, and their chart axis labels. */
const FORMATS = {
  percent: { text: fmt.percent, axis: (v) => `${v} %` },
  celsius: { text: fmt.celsius, axis: (v) => `${v} °C` },
  rate: { text: fmt.rate, axis: fmt.rate },
  load: { text: fmt.load, axis: String },
  duration: { text: fmt.duration, axis: fmt.duration },
  count: { text: fmt.count, axis: String },
  mhz: { text: fmt.mhz, axis: (v) => (v >= 1000 ? `${v / 1000} GHz` : `${v} MHz`) },
};
const formatOf = (m) => FORMATS[m.dashboard.format] || { text: fmt.count, axis: String };

/** Values the master derives rather than receives (`in_payload: false`). */
const DERIVED = { root_disk_percent: (metrics) => rootDisk(metrics)?.percent };
const valueOf = (metrics, m) => (DERIVED[m.key] ? DERIVED[m.key](metrics) : metrics?.[m.key]);

/** Keep the catalog's shown metrics, cards' cells and charts (grouped by `dashboard.chart`). */
function setCatalog(body) {
  const shown = body.metrics.filter((m) => m.dashboard);
  const charts = new Map();
  let series = 0;
  for (const m of shown.filter((x) => x.history && x.dashboard.chart)) {
    const title = m.dashboard.chart;
    if (!charts.has(title)) {
      const key = title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
      charts.set(title, { key, label: title, format: formatOf(m), yMin: m.dashboard.y_min ?? undefined, yMax: m.dashboard.y_max ?? undefined, series: [] });
    }
    // Colours s1..s6 in catalog order, so a chart keeps its colours when another is added after it.
    charts.get(title).series.push([m.key, m.dashboard.series, `s${(series++ % 6) + 1}`]);
  }
  app.catalog = { shown, cards: shown.filter((m) => m.dashboard.card), charts: [...charts.values()] };
  $("#charts").replaceChildren(...app.catalog.charts.map((c) =>
    h("figure", {}, h("figcaption", {}, c.label), h("div", { class: "chart", "data-chart": c.key, "data-points": "0" }))));
}

// ---------------------------------------------------------------- shared bits

function rootDisk(metrics) {
  const disks = metrics?.disks || [];
  return disks.find((d) => d.mount === "/") || disks[0] || null;
}

/** Throttling flags that are set, split into "now" and "since boot" (`*_occurred`). */
function throttleFlags(metrics) {
  const t = metrics?.throttled;
  if (!t || typeof t !== "object") return { now: [], past: [] };
  const set = Object.entries(t).filter(([k, v]) => v === true && k !== "raw").map(([k]) => k);
  const words = (k) => k.replace(/_occurred$/, "").replace(/_/g, "-");
  return {
    now: set.filter((k) => !k.endsWith("_occurred")).map(words),
    past: set.filter((k) => k.endsWith("_occurred")).map(words),
  };
}

function setThrottleBadge(el, metrics) {
  const { now, past } = throttleFlags(metrics);
  el.hidden = !now.length && !past.length;
  el.classList.toggle("warn", now.length > 0);
  const text = now.length ? now.join(", ") : `${past.join(", ")} since boot`;
  el.textContent = `⚠ ${text.charAt(0).toUpperCase()}${text.slice(1)}`;
  el.title = "Raspberry Pi firmware throttling flags (vcgencmd get_throttled)";
}

function setState(el, view) {
  const state = STATE_LABEL[view.state] ? view.state : "unknown";
  el.className = `state ${state}`;
  const since = view.state_since ? ` for ${fmt.duration(serverNow() - view.state_since).split(" ").slice(0, 2).join(" ")}` : "";
  el.replaceChildren(h("span", { class: "dot", "aria-hidden": "true" }), STATE_LABEL[state]);
  el.title = `${STATE_LABEL[state]}${since}`;
}

function modelLine(details) {
  if (!details) return "Waiting for machine details…";
  const parts = [details.model, details.cpu, details.cpu_cores ? `${details.cpu_cores} ${details.cpu_cores === 1 ? "core" : "cores"}` : null, details.ram ? fmt.bytes(details.ram) : null];
  return parts.filter(Boolean).join(" · ");
}

/** A node's tags as chips; master-side ones marked (they are set with `cluster-master nodes tag`). */
function fillTags(list, view) {
  const master = new Set(view.master_tags || []);
  const own = new Set(view.own_tags || []);
  const rows = (view.tags || []).map((t) => [t, master.has(t) && !own.has(t)]);
  list.hidden = rows.length === 0;
  fillList(list, rows, (tag, onMaster) => h("li", {
    class: onMaster ? "tag master" : "tag",
    title: onMaster ? "Tag set on the master" : "Tag from the node's configuration",
  }, tag));
}

function setBar(el, pct) {
  el.style.width = `${Number.isFinite(pct) ? Math.min(100, Math.max(0, pct)) : 0}%`;
  el.classList.toggle("high", pct >= 90);
}

// ---------------------------------------------------------------- overview

function renderCluster() {
  const c = app.cluster;
  if (!c) return;
  const show = {
    nodes_total: c.nodes_total, online: c.online, stale: c.stale, offline: c.offline,
    cores_total: c.cores_total, ram_total_bytes: fmt.bytes(c.ram_total_bytes),
    cpu_percent_avg: fmt.percent(c.cpu_percent_avg), load_1_avg: fmt.load(c.load_1_avg),
  };
  for (const [k, v] of Object.entries(show)) {
    const el = $(`#cluster [data-stat="${k}"]`);
    if (el) el.textContent = v ?? fmt.DASH;
  }
}

/** A card's cells: the catalog's `card` metrics (a bar under percentages), then "Last seen". */
function cardCells() {
  return [
    ...app.catalog.cards.map((m) => [m.key, m.dashboard.label, m.unit === "%"]),
    ["seen", "Last seen", false],
  ];
}

function buildCard(id) {
  const link = h("a", { href: `#/node/${encodeURIComponent(id)}` }, id);
  const cells = cardCells().map(([key, label, bar]) =>
    h("div", { class: "cell" },
      h("dt", {}, label),
      h("dd", {}, h("span", { "data-field": key }, fmt.DASH),
        ...(bar ? [h("span", { class: "bar", "aria-hidden": "true" }, h("span", { "data-bar": key }))] : []))));
  const spark = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  for (const [k, v] of Object.entries({ class: "sparkline", viewBox: "0 0 100 24", preserveAspectRatio: "none", "data-points": "0", role: "img", "aria-label": "CPU, last 15 minutes" })) spark.setAttribute(k, v);
  const card = h("article", { class: "card", "data-node": id },
    h("header", {}, h("h3", {}, link), h("span", { class: "state" })),
    h("p", { class: "model" }),
    h("ul", { class: "tags", "aria-label": "Tags", hidden: "" }),
    h("a", { class: "alert-badge", href: "#/alerts", hidden: "" }),
    h("span", { class: "badge", hidden: "" }),
    h("dl", { class: "metrics" }, ...cells),
    h("div", { class: "spark" }, h("span", { class: "spark-label" }, "CPU, last 15 min"), spark));
  card._sparkAt = 0;
  return card;
}

function updateCard(card, v) {
  const m = v.metrics;
  card.dataset.state = v.state;
  setState($(".state", card), v);
  $(".model", card).textContent = modelLine(v.details);
  fillTags($(".tags", card), v);
  setThrottleBadge($(".badge", card), m);
  setAlertBadge($(".alert-badge", card), alertsOf(v.node));
  for (const metric of app.catalog.cards) {
    const value = valueOf(m, metric);
    $(`[data-field="${metric.key}"]`, card).textContent = formatOf(metric).text(value);
    const bar = $(`[data-bar="${metric.key}"]`, card);
    if (bar) setBar(bar, value);
  }
  $('[data-field="seen"]', card).textContent = v.last_seen ? fmt.ago(serverNow() - v.last_seen) : "never";
  $('[data-field="temperature_celsius"]', card)?.classList.toggle("hot", m?.temperature_celsius >= 75);
}

async function refreshSparkline(card, id) {
  card._sparkAt = Date.now();
  const until = serverNow(), since = until - SPARK_WINDOW_S;
  try {
    const res = await getJSON(`/api/nodes/${encodeURIComponent(id)}/history?metric=cpu_percent&since=${since.toFixed(0)}&until=${until.toFixed(0)}&step=${SPARK_STEP_S}`);
    drawSparkline($(".sparkline", card), res.points || [], since, until);
  } catch {
    card._sparkAt = Date.now() - SPARK_MS + 5000; // retry sooner than a full period
  }
}

/** The "#/?tag=a&tag=b" of an overview link showing the nodes with all those tags. */
function tagFilterHash(tags) {
  return tags.length ? `#/?${tags.map((t) => `tag=${encodeURIComponent(t)}`).join("&")}` : "#/";
}

/** One toggle per tag any node has; pressed ones are the filter (kept in the address). */
function renderTagFilter() {
  const all = new Set(app.tagFilter);
  for (const v of app.nodes.values()) for (const t of v.tags || []) all.add(t);
  const tags = [...all].sort();
  $("#tag-filter").hidden = tags.length === 0;
  $("#tag-clear").hidden = app.tagFilter.length === 0;
  const rows = tags.map((t) => [t, app.tagFilter.includes(t)]);
  fillList($("#tag-buttons"), rows, (tag, pressed) => {
    const button = h("button", { type: "button", class: "tag", "aria-pressed": String(pressed), "data-tag": tag }, tag);
    button.addEventListener("click", () => {
      const next = pressed ? app.tagFilter.filter((t) => t !== tag) : [...app.tagFilter, tag];
      location.hash = tagFilterHash(next.sort());
    });
    return button;
  });
}

function renderNodes() {
  const grid = $("#nodes");
  renderTagFilter();
  renderSendBox(app.nodes, app.tagFilter);
  const wanted = app.tagFilter;
  const all = [...app.nodes.keys()];
  const ids = all
    .filter((id) => wanted.every((t) => (app.nodes.get(id).tags || []).includes(t)))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  $("#empty").hidden = all.length > 0;
  $("#filtered-empty").hidden = ids.length > 0 || all.length === 0;
  $("#filtered-empty").textContent = `No node has the tag${wanted.length > 1 ? "s" : ""} ${wanted.join(" and ")}.`;
  const existing = new Map([...grid.children].map((c) => [c.dataset.node, c]));
  const shown = new Set(ids);
  for (const [id, card] of existing) if (!shown.has(id)) card.remove();
  ids.forEach((id, i) => {
    let card = existing.get(id);
    if (!card) card = buildCard(id);
    if (grid.children[i] !== card) grid.insertBefore(card, grid.children[i] || null);
    updateCard(card, app.nodes.get(id));
    if (Date.now() - card._sparkAt >= SPARK_MS) refreshSparkline(card, id);
  });
}

// ---------------------------------------------------------------- node page

const page = { id: null, window: 3600, loadedAt: 0, loading: false, seq: 0, alerts: false };

/** How often the charts refetch: about once per new point on screen, never more than every 15 s. */
const chartRefreshMs = () => Math.max(15000, (page.window / 300) * 1000);

function renderNodePage() {
  const v = app.nodes.get(page.id);
  $("#node-title").textContent = page.id;
  $("#node-missing").hidden = !!v || app.lastOk === null;
  $("#node-missing").textContent = `The master knows no node called “${page.id}”.`;
  $("#node-body").hidden = !v;
  if (!v) { $("#node-state").hidden = true; return; }
  $("#node-state").hidden = false;
  document.title = `${page.id} · picluster`;
  const m = v.metrics, d = v.details || {};
  setState($("#node-state"), v);
  $("#node-view").dataset.state = v.state;
  setThrottleBadge($("#node-throttle"), m);
  setAlertBadge($("#node-alerts"), alertsOf(page.id));
  $("#node-model").textContent = modelLine(v.details);
  fillTags($("#node-tags"), v);
  renderNodeActions(page.id, v);
  const now = [
    ...app.catalog.shown.map((metric) => [metric.dashboard.label, formatOf(metric).text(valueOf(m, metric))]),
    ["Last seen", v.last_seen ? fmt.ago(serverNow() - v.last_seen) : "never"],
  ];
  fillList($("#node-now"), now, (label, value) => h("li", { class: "stat" }, h("span", { class: "label" }, label), h("span", { class: "value" }, value)));
  const facts = [
    ["Hostname", d.hostname], ["Model", d.model], ["CPU", d.cpu], ["Cores", d.cpu_cores],
    ["Memory", d.ram ? fmt.bytes(d.ram) : null],
    ["OS", d.os], ["Kernel", d.kernel], ["Architecture", d.arch],
    ["IP addresses", (d.ip_addresses || []).join(", ")], ["Agent", d.agent_version],
    ["Report interval", d.interval_s ? `${d.interval_s} s` : null],
    ...(m?.disks || []).map((x) => [`Disk ${x.mount}`, `${fmt.bytes(x.used_bytes)} of ${fmt.bytes(x.total_bytes)} (${fmt.percent(x.percent)})`]),
    ["Messages", `${v.counters?.received ?? 0} received · ${v.counters?.duplicates ?? 0} duplicates · ${v.counters?.seq_gaps ?? 0} gaps`],
  ].filter(([, value]) => value !== null && value !== undefined && value !== "");
  fillList($("#node-facts"), facts, (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, String(value))));
  const due = Date.now() - page.loadedAt >= chartRefreshMs();
  if (page.loadedAt === 0 || (due && !page.loading)) loadCharts();
}

/** Replace a list's items only when the text changed, so an open <details> or selection stays put. */
function fillList(list, rows, make) {
  const key = JSON.stringify(rows);
  if (list._key === key) return;
  list._key = key;
  list.replaceChildren(...rows.map(([a, b]) => make(a, b)));
}

async function loadCharts() {
  const id = page.id, win = page.window;
  const seq = ++page.seq;
  page.loading = true;
  page.loadedAt = Date.now();
  const until = serverNow(), since = until - win;
  // ~300 points per chart: plenty for a chart's width, light for a Pi to serve.
  const step = Math.max(1, Math.round(win / CHART_POINTS));
  const q = (metric) => getJSON(`/api/nodes/${encodeURIComponent(id)}/history?metric=${metric}&since=${since.toFixed(0)}&until=${until.toFixed(0)}&step=${step}`);
  try {
    const charts = app.catalog.charts;
    const metrics = charts.flatMap((c) => c.series.map((s) => s[0]));
    const results = await Promise.all(metrics.map((mt) => q(mt).catch(() => ({ points: [], step_s: 0 }))));
    if (seq !== page.seq) return; // the user picked another node or window meanwhile
    const byMetric = Object.fromEntries(metrics.map((mt, i) => [mt, results[i]]));
    for (const c of charts) {
      renderChart($(`[data-chart="${c.key}"]`), {
        label: `${c.label}, last ${$(`[data-window="${win}"]`).textContent}`,
        format: c.format.text, axisFormat: c.format.axis, yMin: c.yMin, yMax: c.yMax, since, until,
        step: byMetric[c.series[0][0]].step_s || step,
        series: c.series.map(([mt, name, cls]) => ({ name, cls, points: byMetric[mt].points || [] })),
      });
    }
  } finally {
    if (seq === page.seq) page.loading = false;
  }
}

// The window lives in the URL (#/node/pi-01/24h) so a view can be bookmarked or shared.
const WINDOWS = { "1h": 3600, "24h": 86400, "7d": 604800 };

$("#windows").addEventListener("click", (ev) => {
  const btn = ev.target.closest("button[data-window]");
  if (!btn || !page.id) return;
  const name = Object.keys(WINDOWS).find((k) => WINDOWS[k] === Number(btn.dataset.window));
  location.hash = `#/node/${encodeURIComponent(page.id)}/${name}`;
});

// ---------------------------------------------------------------- alerts
// /api/alerts is read on every poll: the banner and the card badges are on every page. The
// history and the silences only while the Alerts page is open. A master without the alert API
// (404) or a failed request shows nothing: alerts add to the page, they never break it.

const HISTORY_LIMIT = 100;
const BANNER_MAX = 5;
const CLUSTER_NODE = "_cluster"; // the cluster-wide alert (cluster_offline) is filed under it
// Suggestions for the silence form only; the master accepts whatever rules it has configured.
const KNOWN_RULES = [
  "node_offline", "under_voltage", "throttled", "temperature", "disk_full", "memory",
  "rebooted", "data_loss", "cluster_offline",
];
const SEVERITY_RANK = { critical: 0, warning: 1 };
const EVENT_LABEL = { firing: "Firing", resolved: "Resolved", fired: "Fired", flapping: "Flapping", settled: "Settled" };

// The lists as last loaded (null: not yet), and whether the last load of each failed.
const alertPage = { history: null, silences: null, historyFailed: false, silencesFailed: false };

async function loadAlerts() {
  try {
    app.alerts = await getJSON("/api/alerts");
    app.alertsError = null;
  } catch (err) {
    app.alerts = null;
    app.alertsError = err.message;
  }
}

async function loadAlertPage() {
  const [history, silences] = await Promise.allSettled([
    getJSON(`/api/alerts/history?limit=${HISTORY_LIMIT}`),
    getJSON("/api/alerts/silences"),
  ]);
  alertPage.historyFailed = history.status !== "fulfilled";
  alertPage.silencesFailed = silences.status !== "fulfilled";
  if (!alertPage.historyFailed) alertPage.history = history.value.events || [];
  if (!alertPage.silencesFailed) alertPage.silences = silences.value.silences || [];
}

/** Firing alerts, the worst first, then the oldest. */
function firingAlerts() {
  const rank = (a) => SEVERITY_RANK[a.severity] ?? 2;
  return (app.alerts?.alerts || [])
    .filter((a) => a.state === "firing")
    .sort((a, b) => rank(a) - rank(b) || a.since - b.since);
}

const alertsOf = (node) => firingAlerts().filter((a) => a.node === node);
/** "critical", "warning", or "other" for a severity this page does not know. */
const sevKey = (severity) => (severity in SEVERITY_RANK ? severity : "other");
/** A pill in the severity's colour. */
const sevClass = (severity) => `sev sev-${sevKey(severity)}`;
/** A history event's pill: firing in its severity's colour, back to normal in green. */
function eventClass(event, severity) {
  if (event === "resolved" || event === "settled") return "sev sev-ok";
  if (event === "flapping") return "sev sev-warning";
  return sevClass(severity);
}
const capital = (text) => (text ? text.charAt(0).toUpperCase() + text.slice(1) : "");

/** "14:02:11 (12 min ago)"; with the date once it is not today's any more. */
function sinceText(ts) {
  if (typeof ts !== "number") return fmt.DASH;
  const age = serverNow() - ts;
  return `${fmt.clock(ts, age > 20 * 3600)} (${fmt.ago(age)})`;
}

/** "81.5 / 80" (the value against the rule's threshold); nothing for rules without values. */
function valueText(a) {
  if (typeof a.value !== "number") return "";
  return typeof a.threshold === "number" ? `${fmt.num(a.value)} / ${fmt.num(a.threshold)}` : fmt.num(a.value);
}

/** A node's name as a link to its page; the cluster's alert links to the Alerts page. */
function nodeLink(node) {
  if (node === CLUSTER_NODE) return h("a", { href: "#/alerts" }, "the cluster");
  return h("a", { href: `#/node/${encodeURIComponent(node)}` }, node);
}

function setAlertBadge(el, alerts) {
  el.hidden = alerts.length === 0;
  if (!alerts.length) return;
  el.className = `alert-badge sev-${sevKey(alerts[0].severity)}`;
  el.classList.toggle("silenced", alerts.every((a) => a.silenced));
  const rules = alerts.map((a) => a.rule).join(", ");
  el.textContent = alerts.length === 1 ? `Alert: ${rules}` : `${alerts.length} alerts: ${rules}`;
  el.title = alerts.map((a) => `${a.rule} (${a.severity}) since ${sinceText(a.since)}${a.silenced ? ", silenced" : ""}`).join("\n");
}

/** The banner on every page and the count in the header. */
function renderAlertBanner() {
  const firing = firingAlerts();
  const banner = $("#alerts-banner");
  banner.hidden = firing.length === 0;
  banner.dataset.severity = firing[0]?.severity || "";
  const count = $("#alerts-count");
  count.hidden = firing.length === 0;
  count.textContent = String(firing.length);
  const rows = firing.slice(0, BANNER_MAX).map((a) => ({
    severity: a.severity, rule: a.rule, node: a.node, since: sinceText(a.since),
    silenced: !!a.silenced, flapping: !!a.flapping,
  }));
  if (firing.length > BANNER_MAX) rows.push({ more: firing.length - BANNER_MAX });
  fillWith($("#alerts-banner-list"), rows, (r) => {
    if (r.more) return h("li", { class: "alert-item" }, h("a", { href: "#/alerts" }, `and ${r.more} more…`));
    return h("li", { class: `alert-item${r.silenced ? " silenced" : ""}` },
      h("span", { class: sevClass(r.severity) }, capital(r.severity)),
      h("b", {}, r.rule), " on ", nodeLink(r.node), h("span", { class: "since" }, ` since ${r.since}`),
      ...tags(r));
  });
}

function tags(r) {
  return [
    ...(r.silenced ? [h("span", { class: "tag" }, "silenced")] : []),
    ...(r.flapping ? [h("span", { class: "tag" }, "flapping")] : []),
  ];
}

function renderAlertsPage() {
  document.title = "Alerts · picluster";
  const available = app.alerts !== null;
  $("#alerts-unavailable").hidden = available;
  $("#alerts-unavailable").textContent = `This master reports no alerts (${app.alertsError || "no answer"}).`;
  $("#alerts-body").hidden = !available;
  if (!available) return;

  const firing = firingAlerts();
  $("#firing-empty").hidden = firing.length > 0;
  $("#firing-wrap").hidden = firing.length === 0;
  fillWith($("#firing-rows"), firing.map((a) => ({
    severity: a.severity, node: a.node, rule: a.rule, since: sinceText(a.since),
    value: valueText(a), detail: a.detail || "",
    silenced: !!a.silenced, flapping: !!a.flapping,
  })), (r) => h("tr", { class: r.silenced ? "silenced" : "" },
    h("td", {}, h("span", { class: sevClass(r.severity) }, capital(r.severity))),
    h("td", {}, nodeLink(r.node)),
    h("td", {}, h("code", {}, r.rule), ...tags(r)),
    h("td", { class: "nowrap" }, r.since),
    h("td", { title: "value / threshold" }, r.value),
    h("td", {}, r.detail),
    h("td", {}, h("button", { type: "button", class: "small admin-only", "data-prefill": JSON.stringify([r.node, r.rule]) }, "Silence…"))));
  renderDelivery(app.alerts.delivery);

  const silences = alertPage.silences;
  $("#silences-empty").hidden = !alertPage.silencesFailed && (!silences || silences.length > 0);
  $("#silences-empty").textContent = alertPage.silencesFailed ? "The silences could not be loaded." : "No silences.";
  $("#silences-wrap").hidden = !silences?.length;
  fillWith($("#silence-rows"), (silences || []).map((x) => ({
    id: x.id, node: x.node, rule: x.rule, until: typeof x.ends === "number" ? `${fmt.clock(x.ends, true)} (in ${fmt.duration(x.ends - serverNow())})` : fmt.DASH,
    comment: x.comment || "",
  })), (r) => h("tr", {},
    h("td", {}, r.node === CLUSTER_NODE ? "the cluster" : r.node),
    h("td", {}, r.rule === null ? h("em", {}, "all rules") : h("code", {}, r.rule)),
    h("td", { class: "nowrap" }, r.until),
    h("td", {}, r.comment),
    h("td", {}, h("button", { type: "button", class: "small admin-only", "data-remove": String(r.id) }, "Remove"))));

  const history = alertPage.history;
  $("#history-empty").hidden = !alertPage.historyFailed && (!history || history.length > 0);
  $("#history-empty").textContent = alertPage.historyFailed ? "The history could not be loaded." : "No alert has fired yet.";
  $("#history-wrap").hidden = !history?.length;
  fillWith($("#history-rows"), (history || []).map((e) => ({
    at: typeof e.at === "number" ? fmt.clock(e.at, true) : fmt.DASH, node: e.node, rule: e.rule,
    event: e.event, severity: e.severity, message: e.message || "", notified: !!e.notified,
  })), (r) => h("tr", {},
    h("td", { class: "nowrap" }, r.at),
    h("td", {}, nodeLink(r.node)),
    h("td", {}, h("code", {}, r.rule)),
    h("td", {}, h("span", { class: eventClass(r.event, r.severity) }, EVENT_LABEL[r.event] || r.event)),
    h("td", {}, r.message),
    h("td", {}, r.notified ? "sent" : h("span", { class: "muted" }, "no"))));

  // Suggestions for the silence form: the known nodes (and the cluster), rules seen or built in.
  const nodes = [...app.nodes.keys(), CLUSTER_NODE].sort();
  const rules = [...new Set([...KNOWN_RULES, ...(app.alerts.alerts || []).map((a) => a.rule)])].sort();
  fillWith($("#known-nodes"), nodes, (n) => h("option", { value: n }));
  fillWith($("#known-rules"), rules, (r) => h("option", { value: r }));
}

/** "Notifications: 12 sent · 1 failed · 0 pending", when the master says so. */
function renderDelivery(d) {
  const el = $("#delivery");
  const counts = ["sent", "failed", "pending", "expired", "dropped"].filter((k) => typeof d?.[k] === "number");
  el.hidden = counts.length === 0;
  el.textContent = `Notifications: ${counts.map((k) => `${d[k]} ${k}`).join(" · ")}`;
  el.classList.toggle("failing", d?.failed > 0 || d?.dropped > 0);
}

function showFormError(text) {
  $("#silence-error").hidden = !text;
  $("#silence-error").textContent = text || "";
}

/** POST/DELETE a silence, then show the lists as the master has them now. */
async function changeSilences(method, path, body, what) {
  try {
    await getJSON(path, {
      method, headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    showFormError(null);
    await Promise.all([loadAlerts(), loadAlertPage()]);
    render();
    return true;
  } catch (err) {
    // No token handling here: a master with an api_token answers 401, and says so.
    showFormError(`Could not ${what}: ${err.message}`);
    return false;
  }
}

$("#silence-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.currentTarget;
  const field = (name) => form.elements[name].value.trim();
  const button = $('button[type="submit"]', form);
  button.disabled = true;
  const body = { node: field("node"), rule: field("rule") || null, for: field("for"), comment: field("comment") };
  if (await changeSilences("POST", "/api/alerts/silences", body, "add the silence")) form.elements.comment.value = "";
  button.disabled = false;
});

$("#alerts-view").addEventListener("click", (ev) => {
  const remove = ev.target.closest("button[data-remove]");
  if (remove) {
    remove.disabled = true;
    const path = `/api/alerts/silences/${encodeURIComponent(remove.dataset.remove)}`;
    changeSilences("DELETE", path, null, "remove the silence").then((ok) => { remove.disabled = ok; });
    return;
  }
  const prefill = ev.target.closest("button[data-prefill]");
  if (prefill) {
    const [node, rule] = JSON.parse(prefill.dataset.prefill);
    const form = $("#silence-form");
    form.elements.node.value = node;
    form.elements.rule.value = rule;
    form.scrollIntoView({ block: "center" });
    form.elements.for.focus();
  }
});

// ---------------------------------------------------------------- routing

function route() {
  const alerts = location.hash === "#/alerts";
  const match = location.hash.match(/^#\/node\/([^/]+)(?:\/(1h|24h|7d))?$/);
  const id = match ? decodeURIComponent(match[1]) : null;
  const query = location.hash.match(/^#\/\?(.*)$/);
  app.tagFilter = query ? [...new URLSearchParams(query[1]).getAll("tag")].filter(Boolean).sort() : [];
  const win = WINDOWS[match?.[2] || "1h"];
  $("#overview-view").hidden = !!id || alerts;
  $("#node-view").hidden = !id;
  $("#alerts-view").hidden = !alerts;
  for (const a of document.querySelectorAll(".top-nav a")) {
    const current = a.dataset.page === (alerts ? "alerts" : id ? "" : "overview");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (alerts && !page.alerts) loadAlertPage().then(render);
  page.alerts = alerts;
  for (const b of $("#windows").children) b.setAttribute("aria-pressed", String(Number(b.dataset.window) === win));
  const newNode = id !== page.id;
  const newWindow = win !== page.window;
  page.id = id;
  page.window = win;
  if (newNode) {
    // Another node's charts must not linger while this one's load.
    for (const el of document.querySelectorAll("[data-chart]")) { el.replaceChildren(); el.dataset.points = "0"; }
    window.scrollTo(0, 0);
  }
  if (!id && !alerts) document.title = "picluster";
  if (newNode || newWindow) page.loadedAt = 0;
  render();
}

function render() {
  if (app.lastOk === null || !app.catalog) return;
  renderAlertBanner();
  if (page.alerts) renderAlertsPage();
  else if (page.id) renderNodePage();
  else { renderCluster(); renderNodes(); }
  tickUpdated();
}

setupActions({ serverNow, nodeLink });
window.addEventListener("hashchange", route);
$("#tag-clear").addEventListener("click", () => { location.hash = "#/"; });
setInterval(tickUpdated, 1000);

/** Who we are first (a viewer's page has no action buttons), then the pages; retried if unreachable. */
async function start() {
  try {
    await loadSession();
  } catch {
    setTimeout(start, 5000);
    return;
  }
  route();
  poll();
}
start();
