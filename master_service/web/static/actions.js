// Commands from the dashboard: a node page's buttons and the overview's "send to a tag".
// Both go through the API as a script would (POST /api/nodes/{node}/commands, POST
// /api/commands). The dashboard has no login: a master with an api_token answers 401 to
// them, and the page shows the API's sentence rather than asking for the token.

import * as fmt from "/static/format.js";
import { $, fillWith, h } from "/static/dom.js";
import { canAct, withCsrf } from "/static/session.js";

const QUICK_TIMEOUT_S = 10;   // ping, refresh, reboot, shutdown: a node answers within a second
const TASK_TIMEOUT_S = 120;   // the API's longest wait: a task may take a while
const HTTP_MARGIN_MS = 10000; // the API answers at its own timeout; leave it time to say so
const RESULTS_KEPT = 5;       // per node page, newest first
const LABEL = { refresh: "Refresh", ping: "Ping", reboot: "Reboot…", shutdown: "Shut down…" };
const VERB = { reboot: "Reboot", shutdown: "Shut down" };
// `run` appears as its tasks' buttons; `set_interval` needs a value and stays with the CLI.
const PLAIN = ["refresh", "ping"];
const POWER = ["reboot", "shutdown"];
const STATUS_LABEL = {
  pending: "sending…", ok: "ok", error: "error", timeout: "no reply", refused: "refused", failed: "not sent",
  waiting: "waiting", skipped: "left alone",
};

const ctx = { serverNow: () => Date.now() / 1000, nodeLink: (n) => n };

/** Give the module the page's clock (the server's notion of now) and its node links. */
export function setupActions({ serverNow, nodeLink }) {
  ctx.serverNow = serverNow;
  ctx.nodeLink = nodeLink;
}

// ---------------------------------------------------------------- what a node offers

/**
 * The actions a node advertises in its machine details (`commands`, `tasks`), in button order:
 * refresh, ping, its tasks, then reboot and shutdown. An agent that lists no commands (older
 * than the list) gets ping and refresh, which every agent obeys.
 */
export function actionsOf(details) {
  const listed = Array.isArray(details?.commands) ? details.commands : null;
  const commands = listed ?? PLAIN;
  const tasks = Array.isArray(details?.tasks) && (listed === null || listed.includes("run")) ? details.tasks : [];
  return [
    ...PLAIN.filter((c) => commands.includes(c)).map((c) => ({ key: c, command: c, label: LABEL[c] })),
    ...tasks.map((t) => ({ key: `task:${t}`, command: "run", task: t, label: `Run ${t}…` })),
    ...POWER.filter((c) => commands.includes(c)).map((c) => ({ key: c, command: c, label: LABEL[c], danger: true })),
  ];
}

/** Reboot, shutdown and tasks ask first; refresh and ping change nothing worth asking about. */
const needsConfirm = (action) => action.danger || action.task !== undefined;
const timeoutOf = (action) => (action.task !== undefined ? TASK_TIMEOUT_S : QUICK_TIMEOUT_S);
const nameOf = (action) => (action.task !== undefined ? `task ${action.task}` : action.command);

// ---------------------------------------------------------------- talking to the API

/** POST JSON; the status and the JSON body, whatever the status. Throws only without an answer. */
async function post(path, body) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), body.timeout_s * 1000 + HTTP_MARGIN_MS);
  try {
    const res = await fetch(path, withCsrf({
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: ctl.signal, cache: "no-store",
    }));
    return { status: res.status, data: await res.json().catch(() => null) };
  } catch (err) {
    if (err.name === "AbortError") throw new Error("the master did not answer in time");
    throw new Error("master unreachable");
  } finally {
    clearTimeout(timer);
  }
}

/** "HTTP 401: this endpoint needs ...": the API's own sentence (`{"detail": ...}`). */
function apiError(status, data) {
  const detail = data?.detail;
  const text = Array.isArray(detail) ? detail.map((d) => d?.msg ?? String(d)).join("; ") : detail;
  return `HTTP ${status}${text ? `: ${text}` : ""}`;
}

// ---------------------------------------------------------------- the confirmation

let settle = null; // resolves the open confirmation's promise

/**
 * Ask before acting, in a modal dialog naming what will happen where. Resolves to null on
 * Cancel (or Escape), else to `{ args }`: the task arguments typed in, when `withArgs`.
 */
function confirmAction({ title, text, ok, danger = false, withArgs = false }) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = ok;
  $("#confirm-ok").classList.toggle("danger", danger);
  $("#confirm-args-label").hidden = !withArgs;
  $("#confirm-args").value = "";
  showConfirmError(null);
  settle?.(null);
  dialog.showModal();
  $("#confirm-cancel").focus(); // Enter on a reflex must not reboot a machine
  return new Promise((resolve) => { settle = resolve; });
}

function showConfirmError(text) {
  $("#confirm-error").hidden = !text;
  $("#confirm-error").textContent = text || "";
}

function finishConfirm(value) {
  const done = settle;
  settle = null;
  if ($("#confirm").open) $("#confirm").close();
  done?.(value);
}

/** Task arguments from the dialog: an object, or an error sentence. */
function parseArgs(text) {
  if (!text.trim()) return { args: undefined };
  try {
    const args = JSON.parse(text);
    if (args && typeof args === "object" && !Array.isArray(args)) return { args };
  } catch { /* said below */ }
  return { error: 'Arguments must be a JSON object, e.g. {"mount": "/srv"}.' };
}

$("#confirm-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const parsed = $("#confirm-args-label").hidden ? { args: undefined } : parseArgs($("#confirm-args").value);
  if (parsed.error) { showConfirmError(parsed.error); return; }
  finishConfirm({ args: parsed.args });
});
$("#confirm-cancel").addEventListener("click", () => finishConfirm(null));
$("#confirm").addEventListener("close", () => finishConfirm(null)); // Escape

/** The `args` of a command: a task's name and, when given, its arguments. */
function argsFor(action, taskArgs) {
  if (action.task === undefined) return {};
  return taskArgs === undefined ? { task: action.task } : { task: action.task, args: taskArgs };
}

// ---------------------------------------------------------------- node page

const results = new Map(); // node -> [entry, newest first]; kept while the page is open
let seq = 0;
let shown = { node: null, actionsKey: null };

/** The node page's buttons (from what the node advertises) and its recent results. */
export function renderNodeActions(node, view) {
  const actions = canAct() ? actionsOf(view.details) : []; // a viewer may not command
  const offline = view.state === "offline";
  const key = JSON.stringify([node, actions, offline]);
  const box = $("#action-buttons");
  if (shown.actionsKey !== key) {
    shown.actionsKey = key;
    box.replaceChildren(...actions.map((a) => {
      const button = h("button", {
        type: "button", class: `action${a.danger ? " danger" : ""}`, "data-action": a.key,
        disabled: offline, title: offline ? `${node} is offline` : null,
      }, a.label);
      button.addEventListener("click", () => runAction(node, a, button));
      return button;
    }));
  }
  const hint = $("#actions-hint");
  const older = !Array.isArray(view.details?.commands);
  hint.hidden = (!offline && !older) || !canAct();
  hint.textContent = offline
    ? `${node} is offline: a command would reach nobody.`
    : "This node's agent does not list its commands; only ping and refresh are offered.";
  shown.node = node;
  renderResults();
}

async function runAction(node, action, button) {
  let taskArgs;
  if (needsConfirm(action)) {
    const name = action.task !== undefined ? `Run task “${action.task}” on ${node}?` : `${VERB[action.command]} ${node}?`;
    const text = action.task !== undefined
      ? `The task runs on ${node} as the agent's user; its output shows here.`
      : `${node} will ${action.command === "reboot" ? "restart" : "power off"} about a second after it answers.${action.command === "shutdown" ? " It stays off until someone powers it on." : ""}`;
    const answer = await confirmAction({
      title: name, text, ok: action.task !== undefined ? `Run on ${node}` : `${VERB[action.command]} ${node}`,
      danger: !!action.danger, withArgs: action.task !== undefined,
    });
    if (answer === null) return; // cancelled: nothing is sent
    taskArgs = answer.args;
  }
  const entry = { id: ++seq, label: action.task !== undefined ? `Run ${action.task}` : LABEL[action.command].replace("…", ""), status: "pending", at: ctx.serverNow() };
  const list = [entry, ...(results.get(node) || [])].slice(0, RESULTS_KEPT);
  results.set(node, list);
  button.disabled = true;
  renderResults();
  const body = { command: action.command, args: argsFor(action, taskArgs), timeout_s: timeoutOf(action) };
  try {
    const { status, data } = await post(`/api/nodes/${encodeURIComponent(node)}/commands`, body);
    if ((status === 200 || status === 504) && data && typeof data.status === "string") {
      Object.assign(entry, fromRecord(data, body.timeout_s));
    } else {
      Object.assign(entry, { status: "failed", error: `Could not send ${nameOf(action)}: ${apiError(status, data)}` });
    }
  } catch (err) {
    Object.assign(entry, { status: "failed", error: `Could not send ${nameOf(action)}: ${err.message}` });
  }
  // An offline node's buttons are rebuilt disabled; this one is then detached, and harmless.
  button.disabled = false;
  renderResults();
}

/** A result entry from a command record (200 answered, 504 not). */
function fromRecord(record, timeoutS) {
  const took = typeof record.replied_at === "number" ? record.replied_at - record.sent_at : null;
  const status = record.status === "pending" ? "timeout" : record.status;
  const error = status === "timeout" ? `no reply within ${fmt.num(timeoutS)} s` : record.error;
  return { status, result: record.result ?? null, error: error || null, took, at: record.replied_at ?? record.sent_at };
}

function renderResults() {
  const node = shown.node;
  const rows = (results.get(node) || []).map((e) => ({ ...e }));
  fillWith($("#action-results"), rows, (e) => h("li", { class: "action-result", "data-status": e.status },
    h("div", { class: "action-head" },
      h("span", { class: pillClass(e.status) }, STATUS_LABEL[e.status] || e.status),
      h("b", {}, e.label),
      h("span", { class: "muted" }, timeText(e.at, e.took))),
    ...detailOf(e)));
}

/** The answer under a result: the error sentence, then the result as JSON (on one line: `compact`). */
function detailOf(e, compact = false) {
  const out = [];
  if (e.error) out.push(h("p", { class: "action-error" }, e.error));
  if (e.result !== null && e.result !== undefined) {
    out.push(h("pre", { class: `json${compact ? " compact" : ""}` }, JSON.stringify(e.result, null, compact ? 0 : 2)));
  }
  return out;
}

const QUIET = ["pending", "waiting", "skipped"];
const pillClass = (status) => `sev ${status === "ok" ? "sev-ok" : QUIET.includes(status) ? "sev-pending" : "sev-critical"}`;

/** "14:02:11 · 0.04 s": when it was answered, and how long that took. */
function timeText(at, took) {
  const when = typeof at === "number" ? fmt.clock(at) : fmt.DASH;
  return typeof took === "number" ? `${when} · ${took.toFixed(2)} s` : when;
}

// ---------------------------------------------------------------- overview: a tag's nodes

const send = { filterKey: null, busy: false, names: [], nodes: new Map(), tagFilter: [] };

/** The tag's nodes, sorted as the API sorts them (by id). */
const nodesOfTag = (nodes, tag) => [...nodes.values()].filter((v) => (v.tags || []).includes(tag))
  .sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));

/** The actions any node of the list advertises, in button order, without duplicates. */
function unionOfActions(views) {
  const seen = new Map();
  for (const v of views) for (const a of actionsOf(v.details)) if (!seen.has(a.key)) seen.set(a.key, a);
  const order = (a) => (PLAIN.includes(a.key) ? PLAIN.indexOf(a.key) : a.danger ? 10 + POWER.indexOf(a.key) : 5);
  return [...seen.values()].sort((a, b) => order(a) - order(b) || a.key.localeCompare(b.key));
}

/** The overview's "send to a tag" box: its tag and command choices follow the nodes. */
export function renderSendBox(nodes, tagFilter) {
  send.nodes = nodes;
  send.tagFilter = tagFilter;
  const tags = [...new Set([...nodes.values()].flatMap((v) => v.tags || []))].sort();
  $("#send-box").hidden = tags.length === 0;
  if (!tags.length) return;
  const tagSelect = $("#send-tag");
  const filterKey = tagFilter.join(",");
  const wanted = send.filterKey !== filterKey && tagFilter.length ? tagFilter[0] : tagSelect.value;
  send.filterKey = filterKey;
  fillWith(tagSelect, tags, (t) => h("option", { value: t }, t));
  tagSelect.value = tags.includes(wanted) ? wanted : tags[0];

  const views = nodesOfTag(nodes, tagSelect.value);
  const commandSelect = $("#send-command");
  const before = commandSelect.value;
  const actions = unionOfActions(views);
  fillWith(commandSelect, actions.map((a) => [a.key, a.label.replace("…", "")]),
    ([key, label]) => h("option", { value: key }, label));
  if (actions.some((a) => a.key === before)) commandSelect.value = before;
  commandSelect._actions = actions;
  showRollingChoice();

  const offline = views.filter((v) => v.state === "offline").length;
  send.names = views.map((v) => v.node);
  $("#send-nodes").textContent = `${views.length} node${views.length === 1 ? "" : "s"}: ${send.names.join(", ")}`
    + (offline ? ` (${offline} offline)` : "");
  $('#send-form button[type="submit"]').disabled = send.busy || views.length === 0;
}

function showSendResult(summary, rows, failed) {
  $("#send-result").hidden = false;
  $("#send-summary").textContent = summary;
  $("#send-summary").classList.toggle("failing", failed);
  $("#send-rows").replaceChildren(...rows.map((r) => h("tr", { "data-row-node": r.node, "data-status": r.status },
    h("td", {}, ctx.nodeLink(r.node)),
    h("td", {}, h("span", { class: pillClass(r.status) }, STATUS_LABEL[r.status] || r.status)),
    h("td", {}, ...detailOf({ error: r.error, result: r.result }, true)),
    h("td", { class: "nowrap" }, typeof r.duration_s === "number" ? `${r.duration_s.toFixed(2)} s` : fmt.DASH))));
}

// Another tag: its nodes and their commands at once, not at the next poll.
$("#send-tag").addEventListener("change", () => renderSendBox(send.nodes, send.tagFilter));
$("#send-command").addEventListener("change", showRollingChoice);

/** The chosen action of the send box, if any. */
const chosenAction = () => ($("#send-command")._actions || []).find((a) => a.key === $("#send-command").value);

/** Reboots and tasks can roll; refresh and ping have nothing to wait for. */
const rollable = (action) => action?.command === "reboot" || action?.task !== undefined;

function showRollingChoice() {
  const can = rollable(chosenAction());
  $("#send-rolling-label").hidden = !can;
  if (!can) $("#send-rolling").checked = false;
}

// ---------------------------------------------------------------- rolling, run by the master

const ROLL_POLL_MS = 1000;
const ROLL_TIMEOUT_S = 300;

/** A row per node of a roll: done, the one that stopped it, left alone, or still to come. */
function rollRows(roll) {
  return roll.nodes.map((node) => {
    if (roll.done.includes(node)) return { node, status: "ok", error: null, result: "back, sending metrics" };
    if (node in roll.failed) return { node, status: "error", error: roll.failed[node], result: null };
    if (roll.untouched.includes(node)) return { node, status: "skipped", error: null, result: "the roll stopped before its turn" };
    return { node, status: "waiting", error: null, result: roll.running ? "its turn, or its return, is to come" : null };
  });
}

function showRoll(roll, what, tag) {
  const summary = roll.running
    ? `Rolling ${what} of ${tag}: ${roll.done.length} of ${roll.nodes.length} done…`
    : roll.ok
      ? `Rolling ${what} of ${tag}: all ${roll.nodes.length} done`
      : `Rolling ${what} of ${tag} stopped: ${roll.done.length} of ${roll.nodes.length} done${roll.error ? ` (${roll.error})` : ""}`;
  showSendResult(summary, rollRows(roll), roll.ok === false);
  const log = $("#roll-log");
  log.hidden = false;
  log.textContent = roll.lines.join("\n");
  log.scrollTop = log.scrollHeight;
}

/** Start a roll over a tag in the master and follow it until it ends. */
async function startRoll(action, tag, taskArgs) {
  const body = action.task !== undefined
    ? { command: "run", task: action.task, task_args: argsFor(action, taskArgs).args || {}, tag, timeout_s: ROLL_TIMEOUT_S }
    : { command: "reboot", tag, timeout_s: ROLL_TIMEOUT_S };
  const what = nameOf(action);
  const started = await fetch("/api/rollouts", withCsrf({
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), cache: "no-store",
  }));
  let roll = await started.json().catch(() => null);
  if (started.status !== 202 || !roll) {
    showSendResult(`Could not start a rolling ${what} of ${tag}: ${apiError(started.status, roll)}`, [], true);
    return;
  }
  showRoll(roll, what, tag);
  while (roll.running) {
    await new Promise((resolve) => setTimeout(resolve, ROLL_POLL_MS));
    const res = await fetch(`/api/rollouts/${roll.id}`, { cache: "no-store" });
    if (!res.ok) continue; // a blip: the roll goes on in the master regardless
    roll = await res.json();
    showRoll(roll, what, tag);
  }
}

$("#send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (send.busy) return;
  const tag = $("#send-tag").value;
  const action = ($("#send-command")._actions || []).find((a) => a.key === $("#send-command").value);
  if (!tag || !action) return;
  const names = send.names.join(", ");
  const rolling = rollable(action) && $("#send-rolling").checked;
  let taskArgs;
  if (needsConfirm(action)) {
    const what = action.task !== undefined ? `Run task “${action.task}”` : VERB[action.command];
    const answer = await confirmAction({
      title: `${what} on every node tagged ${tag}${rolling ? ", one at a time" : ""}?`,
      text: rolling
        ? `Nodes tagged ${tag}: ${names}. One node at a time: each must come back and send metrics before the next; the roll stops at the first that does not.`
        : `Nodes tagged ${tag}: ${names}.`,
      ok: `${what} on ${tag}`, danger: !!action.danger, withArgs: action.task !== undefined,
    });
    if (answer === null) return;
    taskArgs = answer.args;
  }
  const button = $('#send-form button[type="submit"]');
  send.busy = true;
  button.disabled = true;
  $("#send-result").hidden = false;
  $("#send-summary").textContent = `Sending ${nameOf(action)} to the nodes tagged ${tag}…`;
  $("#send-summary").classList.remove("failing");
  $("#send-rows").replaceChildren();
  $("#roll-log").hidden = true;
  if (rolling) {
    try {
      await startRoll(action, tag, taskArgs);
    } catch (err) {
      showSendResult(`Rolling ${nameOf(action)} of ${tag}: ${err.message}`, [], true);
    } finally {
      send.busy = false;
      button.disabled = false;
    }
    return;
  }
  const body = { command: action.command, args: argsFor(action, taskArgs), timeout_s: timeoutOf(action), tag };
  try {
    const { status, data } = await post("/api/commands", body);
    const at = fmt.clock(ctx.serverNow());
    if (status === 200 && Array.isArray(data?.results)) {
      const good = data.results.filter((r) => r.ok).length;
      const summary = `${nameOf(action)} to ${tag} at ${at}: ${good} of ${data.results.length} node${data.results.length === 1 ? "" : "s"} ok`;
      showSendResult(summary, data.results, !data.ok);
    } else {
      showSendResult(`Could not send ${nameOf(action)} to ${tag}: ${apiError(status, data)}`, [], true);
    }
  } catch (err) {
    showSendResult(`Could not send ${nameOf(action)} to ${tag}: ${err.message}`, [], true);
  } finally {
    send.busy = false;
    button.disabled = false;
  }
});
