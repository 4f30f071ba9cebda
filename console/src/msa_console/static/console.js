// The console page: one snapshot per tick over server-sent events (/console/api/stream), drawn as a graph, a
// table, a sparkline; operator actions POSTed with the credential of "Sign in". Plain DOM, no build step, no
// library: the graph's layout is fixed (clients → gateway → services, the broker beside them), so a few SVG
// elements draw it. Every value from the server goes in through textContent, never as markup.
"use strict";

const API = "/console/api";
const SVG = "http://www.w3.org/2000/svg";
const COLUMN = { "config-server": 0, console: 0, probe: 0, gateway: 1, user: 2, catalog: 2, order: 2 };
const COLUMN_X = [20, 340, 640];
const BROKER = { x: 985, y: 20, w: 230 };
const BOX_W = 200, BOX_H = 88, GAP = 14;

let credential = sessionStorage.getItem("msa-console-credential") || "";
let operator = "";
let latest = null;

const $ = (id) => document.getElementById(id);

// `style` is an object applied through the CSSOM (node.style), never a style attribute: the gateway's
// Content-Security-Policy refuses inline style attributes.
function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  if (text !== "") node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text = "") {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== "") node.textContent = text;
  return node;
}

function fmtRate(r) {
  return r >= 10 ? r.toFixed(0) : r.toFixed(1);
}

function pct(share) {
  return `${(100 * share).toFixed(share && share < 0.1 ? 1 : 0)}%`;
}

// ---- the action log: what each button did, or why it was refused ------------------------------------------
function logAction(text, kind) {
  const item = el("li", { class: kind }, `${new Date().toLocaleTimeString()} ${text}`);
  $("action-log").prepend(item);
  while ($("action-log").children.length > 30) $("action-log").lastChild.remove();
}

async function call(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (credential) headers.Authorization = `Bearer ${credential}`;
  let response;
  try {
    response = await fetch(API + path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  } catch (err) {
    logAction(`${path}: the console is not answering (${err.message})`, "refused");
    return null;
  }
  const doc = await response.json().catch(() => ({}));
  if (!response.ok) {
    logAction(`refused: ${response.status} ${doc.title || ""}: ${doc.detail || ""}`, "refused");
    return null;
  }
  for (const line of doc.did || []) logAction(line, "did");
  return doc;
}

// ---- signing in ------------------------------------------------------------------------------------------------
async function whoAmI() {
  if (!credential) {
    setOperator("");
    return;
  }
  const response = await fetch(`${API}/me`, { headers: { Authorization: `Bearer ${credential}` } });
  const doc = await response.json().catch(() => ({}));
  if (response.ok) {
    setOperator(doc.operator);
  } else {
    setOperator("");
    $("who").textContent = `not an operator (${response.status}: ${doc.detail || doc.title || ""})`;
  }
}

function setOperator(name) {
  operator = name;
  $("who").dataset.operator = name;
  $("who").textContent = name ? `operator: ${name}` : "not signed in: watching only";
  document.body.dataset.operator = name ? "yes" : "no";
}

async function signIn(event) {
  event.preventDefault();
  const username = $("username").value.trim();
  const secret = $("secret").value;
  if (!username) {
    credential = secret; // the admin token itself
  } else {
    const form = new URLSearchParams({ username, password: secret });
    const response = await fetch("/api/auth/token", { method: "POST", body: form });
    const doc = await response.json().catch(() => ({}));
    if (!response.ok) {
      logAction(`sign-in refused: ${response.status} ${doc.detail || doc.title || ""}`, "refused");
      return;
    }
    credential = doc.access_token;
  }
  sessionStorage.setItem("msa-console-credential", credential);
  $("secret").value = "";
  await whoAmI();
}

function signOut() {
  credential = "";
  sessionStorage.removeItem("msa-console-credential");
  setOperator("");
  logAction("signed out: the chaos and load controls now refuse", "did");
}

// ---- the graph ----------------------------------------------------------------------------------------------------
function layout(services) {
  const boxes = {};
  const next = [20, 20 + BOX_H + GAP, 20]; // the gateway level with the middle service
  for (const service of services) {
    const column = COLUMN[service.name] ?? 2;
    boxes[service.name] = { x: COLUMN_X[column], y: next[column], w: BOX_W, h: BOX_H, column };
    next[column] += BOX_H + GAP;
  }
  return boxes;
}

function drawGraph(snap) {
  const graph = $("graph");
  graph.replaceChildren();
  const defs = svg("defs");
  for (const [id, colour] of [["arrow", "#456"], ["arrow-event", "#a60"]]) {
    const marker = svg("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
      orient: "auto-start-reverse" });
    marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: colour }));
    defs.append(marker);
  }
  graph.append(defs);
  const boxes = layout(snap.services);
  const bottom = Math.max(200, ...Object.values(boxes).map((b) => b.y + b.h)) + 10;
  graph.setAttribute("viewBox", `0 0 1220 ${bottom}`);

  // Event flows, summed per publisher → consumer pair: listed in the broker's box, drawn as dashed curves
  // through it (the event types in each curve's tooltip).
  const pairs = {};
  for (const f of snap.flows) {
    const key = `${f.from}->${f.to}`;
    const pair = (pairs[key] = pairs[key] || { from: f.from, to: f.to, rate: 0, failed: 0, types: [] });
    pair.rate += f.rate;
    pair.failed += f.rate * f.error_share;
    pair.types.push(`${f.event_type} ${fmtRate(f.rate)}/s, ${pct(f.error_share)} retried or dead-lettered`);
  }
  const flows = Object.values(pairs).filter((p) => boxes[p.from] && boxes[p.to]);

  // The broker, with its link state and the flows through it.
  const link = (snap.broker || {}).link || "unknown";
  const height = 62 + 18 * flows.length;
  const broker = svg("g", { class: `broker link-${link}`, "data-broker": link });
  broker.append(svg("rect", { x: BROKER.x, y: BROKER.y, width: BROKER.w, height, rx: 8 }),
    svg("text", { x: BROKER.x + 10, y: BROKER.y + 20, class: "title" }, "RabbitMQ"),
    svg("text", { x: BROKER.x + 10, y: BROKER.y + 40 }, `link ${link}${link === "cut" ? " ✗" : ""}`));
  flows.forEach((p, n) => broker.append(svg("text", { x: BROKER.x + 10, y: BROKER.y + 62 + 18 * n,
    class: `flow-label${p.failed > 0 ? " failing" : ""}`, "data-flow": `${p.from}->${p.to}` },
    `${p.from} → ${p.to}  ${fmtRate(p.rate)}/s · ${pct(p.rate ? p.failed / p.rate : 0)} failed`)));
  graph.append(broker);
  flows.forEach((p, n) => {
    const a = boxes[p.from], b = boxes[p.to];
    const bx = BROKER.x, by = BROKER.y + 58 + 18 * n;
    const d = `M${a.x + a.w},${a.y + a.h - 12} C${bx - 120},${a.y + a.h - 12} ${bx - 80},${by} ${bx},${by} ` +
      `C${bx - 80},${by} ${bx - 120},${b.y + 12} ${b.x + b.w},${b.y + 12}`;
    const flow = svg("g", { class: "flow", "data-flow": `${p.from}->${p.to}` });
    flow.append(svg("path", { d, "marker-end": "url(#arrow-event)" }),
      svg("title", {}, `events ${p.from} → ${p.to}: ${p.types.join(", ")}`));
    graph.append(flow);
  });

  // Calls: arrows between service boxes; their labels go on top of everything, drawn last.
  const labels = [];
  for (const c of snap.calls) {
    const a = boxes[c.from], b = boxes[c.to];
    if (!a || !b) continue;
    let d, mx, my, anchor = "middle";
    if (a.column === b.column) { // a bend on the right side, between two boxes of one column
      const x = a.x + a.w, y1 = a.y + a.h / 2, y2 = b.y + b.h / 2;
      d = `M${x},${y1} C${x + 80},${y1} ${x + 80},${y2} ${x},${y2}`;
      mx = x + 64; my = (y1 + y2) / 2 + 4;
    } else {
      const [from, to] = a.column < b.column ? [a, b] : [b, a];
      const x1 = from.x + from.w, y1 = from.y + from.h / 2, x2 = to.x, y2 = to.y + to.h / 2;
      d = a.column < b.column ? `M${x1},${y1} L${x2},${y2}` : `M${x2},${y2} L${x1},${y1}`;
      // The label sits near the arrow's head, where arrows from one box have spread apart.
      const [hx, hy, tx, ty] = a.column < b.column ? [x2, y2, x1, y1] : [x1, y1, x2, y2];
      if (hx > tx) {
        mx = tx + 0.75 * (hx - tx) - 4; my = ty + 0.75 * (hy - ty) - 5; anchor = "end";
      } else { // toward the clients' column: one level, the label above the arrow's middle
        mx = (hx + tx) / 2; my = (hy + ty) / 2 - 6;
      }
    }
    const bad = c.error_share > 0;
    const edge = svg("g", { class: `call${bad ? " failing" : ""}`, "data-call": `${c.from}->${c.to}` });
    edge.append(svg("path", { d, "marker-end": "url(#arrow)" }));
    labels.push(svg("text", { x: mx, y: my, "text-anchor": anchor, class: `call-label${bad ? " failing" : ""}`,
      "data-call": `${c.from}->${c.to}` }, `${fmtRate(c.rate)}/s · ${pct(c.error_share)} 5xx`));
    edge.append(svg("title", {}, `${c.from} calls ${c.to}: ${c.rate}/s, ${pct(c.error_share)} of ${c.to}'s answers 5xx`));
    graph.append(edge);
  }

  // Service boxes with their instances (colour and a text label: health is never told by colour alone).
  for (const service of snap.services) {
    const box = boxes[service.name];
    const g = svg("g", { class: "service", "data-service": service.name });
    g.append(svg("rect", { x: box.x, y: box.y, width: box.w, height: box.h, rx: 8 }),
      svg("text", { x: box.x + 10, y: box.y + 18, class: "title" }, service.name));
    service.instances.forEach((inst, n) => {
      const cx = box.x + 30 + n * 62, cy = box.y + 44;
      const node = svg("g", { class: `instance ${inst.health}`, "data-instance": inst.id, "data-health": inst.health,
        tabindex: 0, role: "img", "aria-label": `${inst.id}: ${inst.health}` });
      node.append(svg("circle", { cx, cy, r: 12 }),
        svg("text", { x: cx, y: cy + 27, "text-anchor": "middle", class: "small" }, inst.id),
        svg("text", { x: cx, y: cy + 4, "text-anchor": "middle", class: "glyph" },
          inst.health === "passing" ? "✓" : inst.health === "warning" ? "!" : "✗"),
        svg("title", {}, `${inst.id} (${inst.url}): ${inst.health}${inst.check_output ? " — " + inst.check_output : ""}`));
      g.append(node);
    });
    graph.append(g);
  }
  graph.append(...labels);
}

// ---- the instances table -------------------------------------------------------------------------------------
function actionButton(label, action, body, title) {
  const button = el("button", { type: "button", title }, label);
  button.addEventListener("click", () => call(`/chaos/${action}`, body));
  return button;
}

function drawInstances(snap) {
  const rows = [];
  for (const service of snap.services) {
    for (const inst of service.instances) {
      const tr = el("tr", { "data-instance": inst.id, "data-health": inst.health });
      const health = el("td", { class: `health ${inst.health}` });
      health.append(el("span", { class: `dot ${inst.health}`, "aria-hidden": "true" }), document.createTextNode(
        ` ${inst.health}${inst.answering ? "" : " (not answering)"}`));
      const breakers = Object.entries(inst.breakers).map(([to, state]) => `${to}: ${state}`).join(", ") || "–";
      const q = inst.queues;
      const queues = "main" in q ? `${q.main ?? 0} / ${q.retry ?? 0} / ${q.dlq ?? 0}` : "–";
      const cells = [inst.id, null, fmtRate(inst.rps), pct(inst.error_share), breakers,
        inst.faults.join(", ") || "–", inst.config_version || "–", inst.outbox ?? "–", queues,
        inst.restarted_ago_s !== null && inst.restarted_ago_s < 60 ? `${inst.restarts} (last ${inst.restarted_ago_s} s ago)` :
          String(inst.restarts)];
      cells.forEach((text, n) => tr.append(n === 1 ? health : el("td", n === 4 && breakers.includes("open") ?
        { class: "open" } : {}, String(text))));
      const actions = el("td", { class: "buttons" });
      if (inst.breakable) {
        actions.append(
          actionButton("Crash", "crash", { instance: inst.id }, `crash ${inst.id}; its supervisor restarts it`),
          actionButton("+500 ms", "latency", { instance: inst.id, ms: 500 }, `add 500 ms to every answer of ${inst.id}`),
          actionButton("50% errors", "errors", { instance: inst.id, status: 503, probability: 0.5 },
            `${inst.id} answers 503 to half its requests`));
      }
      tr.append(actions);
      rows.push(tr);
    }
  }
  $("instances").tBodies[0].replaceChildren(...rows);
}

// ---- the load generator and its sparkline ----------------------------------------------------------------------
function drawLoad(load) {
  if (!load) return;
  $("load-rate").max = String(load.max_rate);
  const status = $("load-status");
  status.dataset.running = String(load.running);
  status.textContent = load.running ? `placing ${load.rate} orders/s, ${load.seconds_left} s left` :
    (load.error ? `stopped: ${load.error}` : "not running");
  const seconds = load.seconds || [];
  const placed = seconds.reduce((n, s) => n + s.ok, 0), failed = seconds.reduce((n, s) => n + s.failed, 0);
  $("load-placed").textContent = String(placed);
  $("load-failed").textContent = String(failed);
  const p95 = seconds.length ? Math.max(...seconds.slice(-10).map((s) => s.p95_ms)) : null;
  $("load-p95").textContent = p95 === null ? "–" : p95.toFixed(0);
  const kinds = {};
  for (const s of seconds) for (const [k, v] of Object.entries(s.failures)) kinds[k] = (kinds[k] || 0) + v;
  $("load-failures").textContent = Object.keys(kinds).length ?
    `(${Object.entries(kinds).map(([k, v]) => `${k}×${v}`).join(", ")})` : "";
  const spark = $("sparkline");
  spark.replaceChildren();
  const top = Math.max(1, ...seconds.map((s) => s.ok + s.failed));
  const step = 300 / 60;
  const points = seconds.map((s, n) => `${n * step},${60 - 56 * s.ok / top}`).join(" ");
  if (seconds.length) spark.append(svg("polyline", { points, class: "ok" }));
  seconds.forEach((s, n) => {
    if (s.failed) spark.append(svg("rect", { x: n * step, y: 60 - 56 * s.failed / top, width: step,
      height: 56 * s.failed / top, class: "failed" }));
  });
}

// ---- traces -------------------------------------------------------------------------------------------------------
async function loadTraces() {
  const response = await fetch(`${API}/traces?limit=15`);
  const doc = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("traces-source").textContent = `not available: ${doc.detail || response.status}`;
    return;
  }
  $("traces-source").textContent = `from ${doc.source}`;
  const rows = doc.traces.map((t) => {
    const tr = el("tr", { "data-trace": t.trace_id, class: t.errors ? "error" : "" });
    const open = el("button", { type: "button", class: "link" }, t.operation);
    open.addEventListener("click", () => showTrace(t.trace_id));
    const operation = el("td");
    operation.append(open);
    tr.append(el("td", {}, t.started.slice(11, 23)), operation, el("td", {}, t.services.join(", ")),
      el("td", {}, (t.duration_us / 1000).toFixed(1)), el("td", {}, String(t.errors)));
    return tr;
  });
  $("traces").tBodies[0].replaceChildren(...rows);
}

async function showTrace(id) {
  const box = $("waterfall");
  const response = await fetch(`${API}/traces/${id}`);
  const doc = await response.json().catch(() => ({}));
  if (!response.ok) {
    box.replaceChildren(el("p", {}, `trace ${id}: ${doc.detail || response.status}`));
    return;
  }
  const total = Math.max(1, doc.duration_us);
  const head = el("p", { class: "trace-head" },
    `trace ${doc.trace_id} · ${(doc.duration_us / 1000).toFixed(1)} ms · ${doc.spans} spans · ${doc.services.join(", ")}`);
  const rows = doc.rows.map((r) => {
    const row = el("div", { class: `span-row${r.error ? " error" : ""}`, "data-span": r.span_id });
    const label = el("span", { class: "span-label", style: { paddingLeft: `${r.depth * 12}px` } },
      `${r.instance || r.service} ${r.operation}`);
    const lane = el("span", { class: "lane" });
    if (r.queued_us) {
      lane.append(el("span", { class: "queued", style: { left: `${100 * (r.offset_us - r.queued_us) / total}%`,
        width: `${100 * r.queued_us / total}%` }, title: `queued ${(r.queued_us / 1000).toFixed(1)} ms` }));
    }
    lane.append(el("span", { class: `bar kind-${r.kind.toLowerCase()}`, style: { left: `${100 * r.offset_us / total}%`,
      width: `${Math.max(0.4, 100 * r.duration_us / total)}%` }, title: `${r.kind} ${r.description || ""}` }));
    row.append(label, lane, el("span", { class: "span-ms" },
      `${(r.duration_us / 1000).toFixed(1)} ms${r.error ? " ERROR" : ""}`));
    return row;
  });
  box.replaceChildren(head, ...rows);
}

// ---- the live stream ---------------------------------------------------------------------------------------------
function render(snap) {
  latest = snap;
  drawGraph(snap);
  drawInstances(snap);
  drawLoad(snap.load);
  const link = (snap.broker || {}).link || "unknown";
  $("broker-link").textContent = link;
  $("broker-link").dataset.link = link;
  $("broker-toxics").textContent = ((snap.broker || {}).toxics || []).join(", ");
  $("registry-error").textContent = snap.registry_error ? `registry not answering: ${snap.registry_error}` : "";
  $("changes").replaceChildren(...(snap.changes || []).slice(0, 12).map((c) => el("li", {}, `${c.at} ${c.text}`)));
  $("live").textContent = `live · ${snap.mode} mode · ${snap.at.slice(11, 19)} UTC`;
  $("live").dataset.state = "live";
}

function connect() {
  const stream = new EventSource(`${API}/stream`);
  stream.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  stream.addEventListener("error", () => {
    $("live").textContent = "reconnecting… (the console or the gateway is not answering)";
    $("live").dataset.state = "reconnecting";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", signIn);
  $("signout-button").addEventListener("click", signOut);
  for (const button of document.querySelectorAll("button[data-action]")) {
    const action = button.dataset.action;
    button.addEventListener("click", () => call(`/chaos/${action}`,
      action === "broker" ? { action: button.dataset.value } : {}));
  }
  $("load-rate").addEventListener("input", () => { $("load-rate-value").textContent = $("load-rate").value; });
  $("load-form").addEventListener("submit", (event) => {
    event.preventDefault();
    call("/load", { rate: Number($("load-rate").value) });
  });
  $("load-stop").addEventListener("click", () => call("/load", { rate: 0 }));
  $("traces-refresh").addEventListener("click", loadTraces);
  whoAmI();
  connect();
  loadTraces();
});
