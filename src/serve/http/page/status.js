// siteboot status page (DESIGN §11). Plain JavaScript, no library: the
// page must work at a site without internet. Every action goes through the
// admin API with the token the operator signed in with, so the page adds no
// second way in. Data from the agent is only ever set as text, never as HTML.
"use strict";

const TOKEN_KEY = "siteboot.admin_token";
const NODES_SHOWN = 200;
const page = {
  token: sessionStorage.getItem(TOKEN_KEY),
  status: null,
  boots: [],
  events: null,
  backoff: 1000,
  pending: new Set(),
  timer: null,
  offlineTick: null,
  armed: null,
  picked: new Map(),
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(stamp) {
  if (!stamp) return "-";
  const at = new Date(stamp);
  if (Number.isNaN(at.getTime())) return String(stamp);
  return at.toLocaleString();
}

function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

function say(text, bad) {
  const message = $("message");
  message.textContent = text;
  message.className = bad ? "bad" : "";
}

// ---- the admin API -------------------------------------------------------

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${page.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    return { status: 0, data: { error: `the agent did not answer (${e.message})` } };
  }
  // Most answers are JSON; a few refusals are a line of text.
  const text = await response.text().catch(() => "");
  let data;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text.trim() }; }
  if (response.status === 401) signOut("The agent refused the token; sign in again.");
  return { status: response.status, data };
}

function failure(result) {
  const detail = result.data && (result.data.error || result.data.message);
  return `${result.status || "no answer"}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
}

// ---- status (open to all, no token) ---------------------------------------

const HEADLINES = {
  green: "ONLINE",
  yellow: "ONLINE · answering from cache",
  red: "OFFLINE",
  grey: "STANDALONE",
};

// {"pxe": 2, "ipxe": 4} as "pxe 2, ipxe 4" (the same words as the page's
// first render and `siteboot status`).
function counts(map) {
  const shown = Object.entries(map || {}).map(([key, count]) => `${key} ${count}`);
  return shown.length ? shown.join(", ") : "none";
}

// The same line as the server renders (policy::summary).
function policyText(status) {
  const p = status.policy || {};
  const part = (label, v, none) => `${label} ${(v && v.value) || none} (${(v && v.origin) || "default"})`;
  const line = [part("autonomy", p.autonomy, "full"), part("cache", p.cache_policy, "assigned"),
    part("conflicts", p.conflict_strategy, "per kind")].join(" · ");
  return status.sync_paused ? `${line} · sync paused` : line;
}

// What the node buttons depend on: the mode and the autonomy level.
function allowKey(status) {
  if (!status) return "none";
  return `${status.mode} ${status.policy && status.policy.autonomy && status.policy.autonomy.value}`;
}

// DESIGN §15: what the autonomy level forbids while the controller is
// unreachable, in the agent's own words (its 409 says the same); null
// when allowed. `state` null: adding a node.
function forbidden(state) {
  const status = page.status;
  if (!status || status.mode !== "offline") return null;
  const level = status.policy && status.policy.autonomy && status.policy.autonomy.value;
  const refused = (what) => `the site's autonomy level is ${level}: while the controller is unreachable it may not ${what}`;
  if (level === "readonly") return refused(state === null ? "create nodes" : "change a node's state");
  if (level === "limited" && (state === "pending" || state === "reprovision")) {
    return refused(`set a node to ${state} (it would start an install)`);
  }
  return null;
}

async function refreshStatus() {
  let status;
  try {
    const response = await fetch("/api/v1/status", { cache: "no-store" });
    status = await response.json();
  } catch (_) {
    showBadge("grey", "AGENT UNREACHABLE");
    return;
  }
  page.status = status;
  const indicator = status.indicator || "grey";
  showBadge(indicator, HEADLINES[indicator] || status.mode);
  document.body.dataset.mode = status.mode;
  $("offline-row").hidden = status.mode !== "offline";
  $("offline-since").textContent = when(status.offline_since);
  startOfflineClock(status.mode === "offline" ? status.offline_duration_s : null);
  $("last-sync").textContent = status.last_sync_at ? when(status.last_sync_at) : "never";
  $("nodes-cached").textContent = status.nodes_cached;
  $("queue-pending").textContent = status.queue.pending;
  $("queue-in-flight").textContent = status.queue.in_flight;
  $("queue-failed").textContent = status.queue.failed + status.queue.conflict;
  $("conflicts-open").textContent = status.conflicts_pending;
  $("policy-text").textContent = policyText(status);
  $("sync-now").disabled = !!status.sync_paused;
  $("sync-now").title = status.sync_paused ? "sync is paused by an operator: siteboot sync resume" : "";
  // The node buttons follow the mode and the autonomy level: redrawn when
  // either changes.
  // (Drawn before this status came, they are drawn again too.)
  if (page.nodesAllowKey !== undefined && page.nodesAllowKey !== allowKey(status)) schedule("nodes");
  const addForbidden = forbidden(null);
  $("add-node-button").disabled = !!addForbidden;
  $("add-node-forbidden").hidden = !addForbidden;
  $("add-node-forbidden").textContent = addForbidden || "";
  $("dhcp-row").hidden = !status.dhcp;
  if (status.dhcp) {
    $("dhcp-answered").textContent = counts(status.dhcp.answered);
    $("dhcp-not-answered").textContent = counts(status.dhcp.not_answered);
  }
  document.title = `siteboot · ${status.site_id} · ${HEADLINES[indicator] || status.mode}`;
}

function showBadge(indicator, text) {
  const badge = $("badge");
  badge.className = `badge ind-${indicator}`;
  badge.dataset.indicator = indicator;
  badge.textContent = text;
}

function startOfflineClock(seconds) {
  clearInterval(page.offlineTick);
  if (seconds === null || seconds === undefined) return;
  const started = Date.now() - seconds * 1000;
  const show = () => { $("offline-for").textContent = duration((Date.now() - started) / 1000); };
  show();
  page.offlineTick = setInterval(show, 1000);
}

// ---- sections (admin) -----------------------------------------------------

function renderBoots() {
  const body = $("boots").tBodies[0];
  body.replaceChildren(...page.boots.map((b) => el("tr", { "data-mac": b.mac },
    el("td", { text: when(b.at) }),
    el("td", { class: "mono", text: b.mac }),
    el("td", { text: b.state || "unknown" }),
    el("td", { text: b.action }),
    el("td", { class: `src-${b.source}`, text: b.source }),
  )));
  $("boots-empty").hidden = page.boots.length > 0;
}

async function refreshBoots() {
  const result = await api("GET", "/api/v1/boots");
  if (result.status !== 200) return;
  page.boots = result.data.data || [];
  renderBoots();
}

// A boot can reach the page twice (in a fetch of the list and in an event
// racing it): one row per boot.
function addBoots(latest) {
  const key = (b) => `${b.mac} ${b.at} ${b.action} ${b.source}`;
  const seen = new Set(page.boots.map(key));
  const fresh = (latest || []).filter((b) => !seen.has(key(b)));
  page.boots = fresh.concat(page.boots).slice(0, 50);
  renderBoots();
}

async function refreshNodes() {
  const search = $("node-search").value.trim();
  const state = $("node-state-filter").value;
  const query = new URLSearchParams();
  if (search) query.set("search", search);
  if (state) query.set("state", state);
  query.set("limit", NODES_SHOWN);
  const result = await api("GET", `/api/v1/nodes?${query}`);
  if (result.status !== 200) return;
  const nodes = result.data.data || [];
  const total = result.data.total ?? nodes.length;
  const states = [...$("node-state-filter").options].map((o) => o.value).filter(Boolean);
  const standalone = document.body.dataset.mode === "standalone";
  page.nodesAllowKey = allowKey(page.status);
  $("nodes").tBodies[0].replaceChildren(...nodes.map((n) => {
    // A state picked but not yet set survives a redraw by a live event.
    const picked = page.picked.get(n.mac) ?? n.state;
    const setButton = el("button", { type: "button", class: "quiet set-state" }, "Set state");
    const allow = (state) => {
      const reason = forbidden(state);
      setButton.disabled = !!reason;
      setButton.title = reason || "";
    };
    const choose = el("select", {
      "aria-label": `new state for ${n.mac}`, class: "new-state",
      onchange: (e) => { page.picked.set(n.mac, e.target.value); allow(e.target.value); },
    }, ...states.map((s) => el("option", { value: s, selected: s === picked, text: s })));
    setButton.addEventListener("click", (e) => setState(e.target, n.mac, choose.value));
    allow(picked);
    const retireForbidden = standalone ? null : forbidden("retired");
    return el("tr", { "data-mac": n.mac, "data-state": n.state },
      el("td", { class: "mono", text: n.mac }),
      el("td", { text: n.hostname || "-" }),
      el("td", { class: "state", text: n.state }),
      el("td", { text: n.workflow_id || "-" }),
      el("td", { class: "mono", text: n.id }),
      el("td", { class: "actions" },
        choose,
        setButton,
        armable(el("button", {
          type: "button", class: "danger delete-node", disabled: !!retireForbidden,
          title: retireForbidden || (standalone ? "remove from the store" : "retire at the controller (its record is kept there)"),
          onclick: (e) => armed(e.target, `node-${n.mac}`, () => deleteNode(e.target, n.mac)),
        }, standalone ? "Delete" : "Retire"), `node-${n.mac}`),
      ));
  }));
  $("nodes-more").textContent = total > nodes.length
    ? `Showing ${nodes.length} of ${total}: narrow the search.`
    : total === 0 ? "No node matches." : "";
}

function sideText(side, central) {
  if (!side) return central ? "none: the controller has no such node" : "-";
  const parts = [];
  if (central) {
    parts.push(`state ${side.state}`);
    if (side.version !== null && side.version !== undefined) parts.push(`version ${side.version}`);
    parts.push(`updated ${when(side.updated_at)}`);
  } else {
    parts.push(side.state ? `state ${side.state}` : "a registration");
    parts.push(`by ${side.origin}`);
    parts.push(`at ${when(side.changed_at)}`);
    parts.push(`queue item ${side.queue_id}`);
  }
  return parts.join(" · ");
}

async function refreshConflicts() {
  const result = await api("GET", "/api/v1/conflicts?status=open&limit=100");
  if (result.status !== 200) return;
  const conflicts = result.data.data || [];
  $("conflicts").replaceChildren(...conflicts.map((c) => {
    const buttons = [["keep_local", "Keep local"], ["keep_central", "Keep central"]];
    if (c.kind === "state_mismatch") buttons.push(["merge", "Merge"]);
    return el("article", { class: "conflict", "data-conflict-id": c.id, "data-kind": c.kind },
      el("h3", {}, `#${c.id} ${c.kind.replace(/_/g, " ")} · `, el("span", { class: "mono", text: c.mac })),
      el("div", { class: "sides" },
        el("div", { class: "side local" }, el("b", { text: "Here (local)" }), sideText(c.local, false)),
        el("div", { class: "side central" }, el("b", { text: "Controller (central)" }), sideText(c.central, true)),
      ),
      el("p", { class: "hint", text: `Found ${when(c.detected_at)}. The controller said: ${c.error}` }),
      el("div", { class: "actions" }, ...buttons.map(([resolution, label]) => el("button", {
        type: "button", "data-resolve": resolution,
        onclick: (e) => resolve(e.target, c.id, resolution),
      }, label))),
    );
  }));
  $("conflicts-empty").hidden = conflicts.length > 0;
}

async function refreshQueue() {
  const result = await api("GET", "/api/v1/queue?limit=100");
  if (result.status !== 200) return;
  const items = result.data.data || [];
  $("queue").tBodies[0].replaceChildren(...items.map((item) => el("tr", { "data-queue-id": item.id, "data-status": item.status },
    el("td", { class: "mono", text: item.id }),
    el("td", { text: item.kind }),
    el("td", { class: "mono", text: item.node }),
    el("td", { class: `status-${item.status}`, text: item.status }),
    el("td", { text: item.attempts }),
    el("td", { class: "wrap", text: item.last_error || "-" }),
    el("td", { text: when(item.created_at) }),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "quiet retry", disabled: item.status === "in_flight",
        onclick: (e) => queueAction(e.target, "POST", `/api/v1/queue/${item.id}/retry`, `item ${item.id} retried`) }, "Retry"),
      armable(el("button", { type: "button", class: "danger delete-item",
        onclick: (e) => armed(e.target, `queue-${item.id}`, () => queueAction(e.target, "DELETE", `/api/v1/queue/${item.id}`, `item ${item.id} deleted`)) }, "Delete"), `queue-${item.id}`),
    ),
  )));
  $("queue-empty").hidden = items.length > 0;
}

// ---- actions ----------------------------------------------------------------

// A destructive button asks once more: the first click arms it for 5 s.
// What is armed is kept by key, so a list redrawn by a live event between
// the two clicks keeps the button armed.
function armed(button, key, action) {
  if (page.armed && page.armed.key === key && Date.now() < page.armed.until) {
    page.armed = null;
    button.classList.remove("armed");
    button.textContent = button.dataset.label;
    action();
    return;
  }
  page.armed = { key, until: Date.now() + 5000 };
  showArmed(button, key);
  setTimeout(() => {
    if (page.armed && page.armed.key === key && Date.now() >= page.armed.until) page.armed = null;
    for (const b of document.querySelectorAll(`button[data-arm-key="${key}"]`)) {
      if (!page.armed || page.armed.key !== key) { b.classList.remove("armed"); b.textContent = b.dataset.label; }
    }
  }, 5000);
}

// Marks a (possibly just drawn) button armed if its key is.
function showArmed(button, key) {
  button.dataset.armKey = key;
  if (!button.dataset.label) button.dataset.label = button.textContent;
  if (page.armed && page.armed.key === key && Date.now() < page.armed.until) {
    button.classList.add("armed");
    button.textContent = "Sure?";
  }
}

function armable(button, key) {
  showArmed(button, key);
  return button;
}

async function busy(button, work) {
  if (button) button.disabled = true;
  try { return await work(); } finally { if (button) button.disabled = false; }
}

function written(result, what) {
  if (result.status === 202) say(`${what}: queued (the controller is not reachable; it is sent when it is).`);
  else if (result.status >= 200 && result.status < 300) say(`${what}: done.`);
  else { say(`${what} refused: ${failure(result)}`, true); return false; }
  return true;
}

async function setState(button, mac, state) {
  const result = await busy(button, () => api("PATCH", `/api/v1/nodes/${mac}/state`, { state }));
  if (written(result, `${mac} → ${state}`)) page.picked.delete(mac);
  schedule("nodes", "status", "queue");
}

async function deleteNode(button, mac) {
  const result = await busy(button, () => api("DELETE", `/api/v1/nodes/${mac}`));
  written(result, document.body.dataset.mode === "standalone" ? `${mac} deleted` : `${mac} retired`);
  schedule("nodes", "status", "queue");
}

async function resolve(button, id, resolution) {
  const result = await busy(button, () => api("POST", `/api/v1/conflicts/${id}/resolve`, { resolution }));
  written(result, `conflict ${id} (${resolution.replace(/_/g, " ")})`);
  schedule("conflicts", "status", "queue", "nodes");
}

async function queueAction(button, method, path, what) {
  const result = await busy(button, () => api(method, path));
  written(result, what);
  schedule("queue", "status");
}

async function syncNow(event) {
  say("Syncing…");
  const result = await busy(event.target, () => api("POST", "/api/v1/sync?full=true"));
  if (result.status === 200) {
    const r = result.data || {};
    say(`Synced: ${r.received ?? "?"} nodes received, ${r.changed ?? "?"} changed${(r.errors || []).length ? `, ${r.errors.length} errors` : ""}.`);
  } else {
    say(`Sync failed: ${failure(result)}`, true);
  }
  schedule("status", "nodes", "conflicts", "queue");
}

async function addNode(event) {
  event.preventDefault();
  const form = event.target;
  const body = {};
  for (const [key, value] of new FormData(form)) if (value !== "") body[key] = value;
  const result = await busy(form.querySelector("button"), () => api("POST", "/api/v1/nodes", body));
  if (written(result, `${body.mac} added`)) form.reset();
  schedule("nodes", "status", "queue");
}

async function clearFailed(event) {
  const result = await busy(event.target, () => api("POST", "/api/v1/queue/clear-failed"));
  written(result, "failed items deleted");
  schedule("queue", "status");
}

// ---- refreshing: many events, one fetch per section -------------------------

const REFRESH = {
  status: refreshStatus,
  boots: refreshBoots,
  nodes: refreshNodes,
  conflicts: refreshConflicts,
  queue: refreshQueue,
};

function schedule(...sections) {
  for (const section of sections) page.pending.add(section);
  if (page.timer) return;
  page.timer = setTimeout(() => {
    page.timer = null;
    const due = [...page.pending];
    page.pending.clear();
    for (const section of due) {
      if (section !== "status" && !page.token) continue;
      REFRESH[section]();
    }
  }, 150);
}

// ---- live events: server-sent events read with fetch -------------------------
// EventSource cannot send the Authorization header, and the token must not
// go into a URL (logs, history), so the stream is read by hand.

function handle(kind, data) {
  let payload = null;
  try { payload = data ? JSON.parse(data) : null; } catch (_) { payload = null; }
  switch (kind) {
    case "boots": addBoots(payload && payload.latest); schedule("status"); break;
    case "mode": schedule("status", "queue"); break;
    case "queue": schedule("status", "queue"); break;
    case "conflict": schedule("status", "conflicts", "queue"); break;
    case "sync": schedule("status", "nodes"); break;
    case "node": schedule("status", "nodes"); break;
    case "policy": schedule("status"); break;
    case "sync_pause": schedule("status", "queue"); break;
    case "lagged": schedule(...Object.keys(REFRESH)); break;
    default: break;
  }
}

function setLive(on) {
  const live = $("live");
  live.className = on ? "live-on" : "live-off";
  live.textContent = on ? "live" : "reconnecting…";
}

async function listen() {
  if (!page.token) return;
  const controller = new AbortController();
  page.events = controller;
  try {
    const response = await fetch("/api/v1/events", {
      headers: { Authorization: `Bearer ${page.token}`, Accept: "text/event-stream" },
      cache: "no-store",
      signal: controller.signal,
    });
    if (response.status === 401) { signOut("The agent refused the token; sign in again."); return; }
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    setLive(true);
    page.backoff = 1000;
    document.body.dataset.connects = Number(document.body.dataset.connects || 0) + 1;
    // Whatever happened while not connected is read afresh, at once (a
    // burst of events is what schedule() waits to gather, not this).
    for (const refresh of Object.values(REFRESH)) refresh();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let kind = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") kind = text;
          else if (field === "data") data.push(text);
        }
        if (data.length) handle(kind, data.join("\n"));
      }
    }
  } catch (_) {
    if (controller.signal.aborted) return;
  }
  if (page.events !== controller || controller.signal.aborted) return;
  setLive(false);
  // The agent restarted or the network broke: the status shows what is
  // known meanwhile, and the stream is tried again with a growing wait.
  schedule("status");
  setTimeout(listen, page.backoff);
  page.backoff = Math.min(page.backoff * 2, 15000);
}

// ---- sign-in ------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  $("signin-error").textContent = "";
  let response;
  try {
    response = await fetch("/api/v1/boots", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch (e) {
    $("signin-error").textContent = `The agent did not answer: ${e.message}`;
    return;
  }
  if (response.status !== 200) {
    $("signin-error").textContent = response.status === 401 ? "Wrong token." : `The agent answered ${response.status}.`;
    return;
  }
  page.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  start();
}

function signOut(reason) {
  page.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (page.events) page.events.abort();
  page.events = null;
  $("app").hidden = true;
  $("signin-section").hidden = false;
  $("signin-error").textContent = reason || "";
  setLive(false);
  $("live").textContent = "not live";
}

function start() {
  $("signin-section").hidden = true;
  $("app").hidden = false;
  document.body.dataset.signedIn = "true";
  listen();
}

function boot() {
  $("signin").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("sync-now").addEventListener("click", syncNow);
  $("add-node").addEventListener("submit", addNode);
  $("clear-failed").addEventListener("click", clearFailed);
  let searchTimer = null;
  $("node-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(refreshNodes, 250);
  });
  $("node-state-filter").addEventListener("change", refreshNodes);
  const seconds = Number($("offline-for").dataset.seconds);
  startOfflineClock(document.body.dataset.mode === "offline" ? seconds : null);
  if (page.token) start();
  else $("token").focus();
}

boot();
