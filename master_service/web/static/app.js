// picluster dashboard: polls the master's JSON API and keeps the page in step with it.
// Views: the overview ("#/") and a node page ("#/node/<id>"). No framework; DOM nodes are
// created once and updated in place, so values change without the layout jumping.

import * as fmt from "/static/format.js";
import { drawSparkline, renderChart } from "/static/chart.js";

const POLL_MS = 2000;          // nodes + cluster; stale/offline must show within seconds
const SPARK_MS = 30000;        // sparklines change slowly; no need to hit history every poll
const SPARK_WINDOW_S = 900;
const SPARK_STEP_S = 10;       // 90 points: a sparkline needs no more
const CHART_POINTS = 300;
const REQUEST_TIMEOUT_MS = 5000;
const STATE_LABEL = { online: "Online", stale: "Stale", offline: "Offline", unknown: "Unknown" };

const $ = (sel, root = document) => root.querySelector(sel);

/** Create an element: h("span", {class: "x"}, "text", child). Text is never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

const app = {
  catalog: null,         // the metrics the master knows: GET /api/catalog/metrics
  nodes: new Map(),      // node id -> latest NodeView
  cluster: null,
  clockOffset: 0,        // server clock minus ours: "ago" texts use the server's notion of now
  lastOk: null,          // server time of the last successful poll
  failures: 0,
};

const serverNow = () => Date.now() / 1000 + app.clockOffset;

async function getJSON(path) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), REQUEST_TIMEOUT_MS);
  try {
    const res = await fetch(path, { signal: ctl.signal, cache: "no-store" });
    const body = await res.json().catch(() => null);
    if (!res.ok) throw new Error(`HTTP ${res.status}${body?.detail ? `: ${body.detail}` : ""}`);
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
    const [nodes, cluster] = await Promise.all([getJSON("/api/nodes"), getJSON("/api/cluster")]);
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
  setThrottleBadge($(".badge", card), m);
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

function renderNodes() {
  const grid = $("#nodes");
  const ids = [...app.nodes.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  $("#empty").hidden = ids.length > 0;
  const existing = new Map([...grid.children].map((c) => [c.dataset.node, c]));
  for (const [id, card] of existing) if (!app.nodes.has(id)) card.remove();
  ids.forEach((id, i) => {
    let card = existing.get(id);
    if (!card) card = buildCard(id);
    if (grid.children[i] !== card) grid.insertBefore(card, grid.children[i] || null);
    updateCard(card, app.nodes.get(id));
    if (Date.now() - card._sparkAt >= SPARK_MS) refreshSparkline(card, id);
  });
}

// ---------------------------------------------------------------- node page

const page = { id: null, window: 3600, loadedAt: 0, loading: false, seq: 0 };

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
  $("#node-model").textContent = modelLine(v.details);
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

// ---------------------------------------------------------------- routing

function route() {
  const match = location.hash.match(/^#\/node\/([^/]+)(?:\/(1h|24h|7d))?$/);
  const id = match ? decodeURIComponent(match[1]) : null;
  const win = WINDOWS[match?.[2] || "1h"];
  $("#overview-view").hidden = !!id;
  $("#node-view").hidden = !id;
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
  if (!id) document.title = "picluster";
  if (newNode || newWindow) page.loadedAt = 0;
  render();
}

function render() {
  if (app.lastOk === null || !app.catalog) return;
  if (page.id) renderNodePage();
  else { renderCluster(); renderNodes(); }
  tickUpdated();
}

window.addEventListener("hashchange", route);
setInterval(tickUpdated, 1000);
route();
poll();
