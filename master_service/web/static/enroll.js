// "Add a node" on the overview: asks for a node id, calls POST /api/enrollments and shows the
// one command to run on the new node (with its one-time token) and when that token expires.
// Like the other actions, the dashboard sends no token: a master with an api_token answers 401
// and the dialog shows the API's sentence.

import { $ } from "/static/dom.js";
import { withCsrf } from "/static/session.js";

// The API's node id rule (master_service), checked here so a typo needs no round trip.
const NODE_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const RESERVED = ["picluster-master", "homeassistant"];
const TIMEOUT_MS = 30000;

/** Why `id` is not a usable node id, or null when it is. */
export function nodeIdProblem(id) {
  if (!id) return "Enter a node id.";
  if (RESERVED.includes(id)) return `“${id}” is reserved; choose another node id.`;
  if (!NODE_ID.test(id)) {
    return "A node id is 1 to 63 characters: lowercase letters, digits, - and _, starting with a letter or digit.";
  }
  return null;
}

/** The API's `detail` as a sentence (a string, or FastAPI's list of validation errors). */
function detailOf(status, data) {
  const detail = data?.detail;
  const text = Array.isArray(detail) ? detail.map((d) => d?.msg ?? String(d)).join("; ") : detail;
  return text ? `HTTP ${status}: ${text}` : `HTTP ${status}`;
}

function showError(text) {
  const el = $("#enroll-error");
  el.textContent = text;
  el.hidden = !text;
}

function reset() {
  showError("");
  $("#enroll-result").hidden = true;
  $("#enroll-command").textContent = "";
  $("#enroll-expires").textContent = "";
  $("#enroll-copied").textContent = "";
  $("#enroll-submit").disabled = false;
}

async function submit(event) {
  event.preventDefault();
  const id = $("#enroll-node").value.trim();
  reset();
  const problem = nodeIdProblem(id);
  if (problem) {
    showError(problem);
    return;
  }
  const button = $("#enroll-submit");
  button.disabled = true;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const res = await fetch("/api/enrollments", withCsrf({
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ node: id }), signal: ctl.signal, cache: "no-store",
    }));
    const data = await res.json().catch(() => null);
    if (res.status !== 201 || typeof data?.command !== "string") {
      showError(`Could not add ${id}: ${detailOf(res.status, data)}`);
      return;
    }
    $("#enroll-command").textContent = data.command;
    const expires = new Date(data.expires_at * 1000);
    $("#enroll-expires").dataset.expiresAt = String(data.expires_at);
    $("#enroll-expires").textContent =
      `Run it on ${data.node} before ${expires.toLocaleString()}: the token in it works once and expires then.`;
    $("#enroll-result").hidden = false;
  } catch (err) {
    showError(`Could not add ${id}: ${err.name === "AbortError" ? "the master did not answer in time" : "master unreachable"}`);
  } finally {
    clearTimeout(timer);
    button.disabled = false;
  }
}

/** Select the command's text, so Ctrl+C copies it where the clipboard API is refused. */
function selectCommand() {
  const range = document.createRange();
  range.selectNodeContents($("#enroll-command"));
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

async function copy() {
  const text = $("#enroll-command").textContent;
  const note = $("#enroll-copied");
  try {
    // Only in a secure context (https or localhost); a LAN address over http has none.
    if (!navigator.clipboard) throw new Error("no clipboard");
    await navigator.clipboard.writeText(text);
    note.textContent = "Copied.";
  } catch {
    selectCommand();
    note.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
}

function setup() {
  const dialog = $("#enroll");
  $("#enroll-open").addEventListener("click", () => {
    reset();
    $("#enroll-node").value = "";
    dialog.showModal();
    $("#enroll-node").focus();
  });
  $("#enroll-form").addEventListener("submit", submit);
  $("#enroll-copy").addEventListener("click", copy);
  $("#enroll-close").addEventListener("click", () => dialog.close());
  $("#enroll-open").dataset.ready = "true";
}

setup();
