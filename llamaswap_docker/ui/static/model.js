// #/models/<id>: one model's page. Its state and placement, its container (and how the last
// one ended), the container's CPU, memory and network live from the engine's stats API
// (streamed only while this page is open), its requests and speeds over time, load
// durations, its activity, its logs and its resolved config (secrets masked).

import { $, api, apiJson, bytes, clock, el, errorText, headers, rate, readEvents, Ring, seconds,
  throttle } from "./lib.js";
import { columnChart, lineChart, PALETTE } from "./charts.js";
import { store } from "./state.js";
import { activityHead, activityRow } from "./activitytable.js";
import { LogPane } from "./logpane.js";
import { busy, loadModel, unloadModel, up } from "./models.js";

// Engine readings kept for the charts (about one a second: five minutes).
const READINGS = 300;
// Activity rows of this model kept for its charts and table.
const ROWS = 500;
const TABLE_ROWS = 25;
// Milliseconds before opening a broken stats stream again.
const STATS_RETRY_MS = 2000;

let id = null;
let details = null;
let container = null;
let statsAbort = null;
let readings = new Ring(READINGS);
let rows = new Ring(ROWS);
let pane = null;
let unsubscribe = [];

const dl = (target, pairs) => target.replaceChildren(...pairs.flatMap(([term, value]) =>
  [el("dt", {}, term), el("dd", {}, value ?? "–")]));

function current() { return store.model(id) || details; }

function renderHeader() {
  const m = current();
  if (!m) return;
  $("#model-title").textContent = m.name ? `${id} · ${m.name}` : id;
  const badge = $("#model-state");
  badge.className = `state ${m.state}`;
  badge.textContent = m.state;
  $("#model-load").disabled = busy(m) || m.state === "ready";
  $("#model-unload").disabled = !up(m) || busy(m);
  dl($("#model-placement"), [
    ["State", m.state], ["Uptime", seconds(m.uptime_s)], ["TTL left", m.ttl ? seconds(m.ttl_left_s) : "never"],
    ["In flight", m.in_flight], ["Waiting", m.waiting],
    ["Engine", m.engine || "–"],
    ["GPUs", (m.gpus || []).join(", ") || "none"],
    ["GPU memory need", m.need_bytes ? `${bytes(m.need_bytes)} (${m.need_source})` : m.need_source || "–"],
    ["Failure", m.failure ? el("span", { class: "failure" }, m.failure) : "–"],
  ]);
}

function renderDetails() {
  if (!details) return;
  const c = details.container;
  dl($("#model-container"), c ? [
    ["Name", c.name], ["Id", el("code", {}, c.id.slice(0, 12))], ["Image", details.image],
    ["Created", c.created ? new Date(c.created).toLocaleString([], { hour12: false }) : "–"],
    ["Age", seconds(c.age_s)], ["Reached at", c.base_url || "–"],
    ["Starts", `${details.starts} since the proxy started`], ["Failed starts", details.load_failures],
  ] : [["Container", "none (not running)"], ["Image", details.image],
    ["Starts", `${details.starts} since the proxy started`], ["Failed starts", details.load_failures]]);
  const exit = details.last_exit;
  $("#model-last-exit").hidden = !exit;
  if (exit) {
    $("#model-exit-reason").textContent = `${exit.container_name} stopped ${new Date(exit.stopped_at * 1000).toLocaleString([], { hour12: false })}: ${exit.reason}`;
    $("#model-exit-tail").textContent = exit.output_tail || "(no output)";
  }
  $("#model-config").textContent = JSON.stringify(details.config, null, 2);
  columnChart($("#chart-model-loads"), {
    bars: (details.loads || []).map((load) => ({ label: clock(load.time * 1000), value: load.seconds ?? 0,
      color: load.ok ? PALETTE[2] : PALETTE[3], title: `${clock(load.time * 1000)}: ${load.ok ? `${load.seconds} s` : "failed"}` })),
    yFormat: (v) => `${v.toFixed(1)} s`, empty: "no load since the proxy started",
  });
}

async function loadDetails() {
  const wanted = id;
  try {
    const body = await apiJson(`/api/models/${encodeURIComponent(id)}`);
    if (wanted !== id) return;
    details = body;
    renderHeader();
    renderDetails();
  } catch (error) {
    $("#model-status-line").textContent = `error: ${error.message}`;
  }
}

const refreshDetails = throttle(loadDetails, 1000);

async function loadGpus() {
  const card = $("#model-gpu-card");
  const response = await api("/api/hardware");
  if (!response.ok) { card.hidden = true; return; }
  const hardware = await response.json();
  const m = current();
  const mine = (hardware.gpus || []).filter((gpu) => (gpu.models || []).some((p) => p.model === id)
    || (m && (m.gpus || []).includes(gpu.id)));
  card.hidden = !mine.length;
  $("#model-gpus").replaceChildren(...mine.map((gpu) => {
    const total = gpu.memory_total_bytes || gpu.memory_usable_bytes || 0;
    const placed = (gpu.models || []).find((p) => p.model === id);
    const used = gpu.memory_used_bytes ?? gpu.placed_bytes ?? 0;
    const share = total ? Math.min(100, (used / total) * 100) : 0;
    return el("div", { class: "gpu", "data-gpu": gpu.id },
      el("div", {}, el("strong", {}, gpu.id), ` ${gpu.name || ""}`),
      el("div", { class: "meter" }, el("span", { style: `width:${share.toFixed(1)}%` })),
      el("div", { class: "muted" }, `${bytes(used)} used of ${bytes(total)}`,
        placed && placed.bytes ? ` · this model: ${bytes(placed.bytes)}` : ""));
  }));
}

// ---- the container's resources, live ----------------------------------------------------------

function renderStats() {
  const points = readings.items;
  const cpu = points.map((r) => [r.t, r.cpu_percent]);
  const memory = points.map((r) => [r.t, r.memory_bytes]);
  const rx = [], tx = [];
  for (let i = 1; i < points.length; i++) {
    const dt = (points[i].t - points[i - 1].t) / 1000;
    if (dt <= 0) continue;
    rx.push([points[i].t, Math.max(0, points[i].net_rx_bytes - points[i - 1].net_rx_bytes) / dt]);
    tx.push([points[i].t, Math.max(0, points[i].net_tx_bytes - points[i - 1].net_tx_bytes) / dt]);
  }
  const none = container ? "waiting for the engine…" : "not running";
  lineChart($("#chart-cpu"), { series: [{ name: "CPU", points: cpu }], yFormat: (v) => `${v.toFixed(0)} %`,
    yMax: Math.max(100, ...cpu.map((p) => p[1])), empty: none });
  lineChart($("#chart-memory"), { series: [{ name: "memory", points: memory, color: PALETTE[1] }], yFormat: bytes, empty: none });
  lineChart($("#chart-network"), { series: [{ name: "in", points: rx, color: PALETTE[2] }, { name: "out", points: tx, color: PALETTE[4] }],
    yFormat: (v) => `${bytes(v)}/s`, empty: none });
}

const scheduleStats = throttle(renderStats, 500);

function closeStats() {
  if (statsAbort) { console.debug(`stats stream of ${id}: closing`); statsAbort.abort(); }
  statsAbort = null;
}

async function openStats() {
  closeStats();
  readings.clear();
  renderStats();
  const badge = $("#stats-badge");
  if (!container) { badge.textContent = "· not running"; return; }
  const controller = new AbortController();
  statsAbort = controller;
  const name = container;
  badge.textContent = `· ${name}: connecting…`;
  console.debug(`stats stream of ${id} (${name}): opening`);
  // A stream that broke (the network, not the container stopping) is opened again while the
  // page shows the same container.
  while (!controller.signal.aborted) {
    try {
      const response = await fetch(`/api/models/${encodeURIComponent(id)}/stats`, { headers: headers(), signal: controller.signal });
      if (!response.ok) { badge.textContent = `· ${await errorText(response)}`; return; }
      badge.textContent = `· ${name}: live`;
      badge.dataset.live = "1";
      await readEvents(response, (event) => {
        if (event.type === "stats") {
          readings.push({ ...event.data, t: Date.parse(event.data.read) || Date.now() });
          badge.dataset.readings = readings.length;
          scheduleStats();
        } else if (event.type === "end") {
          badge.textContent = `· ${event.data.container} stopped`;
        }
      });
      return;
    } catch (error) {
      if (error.name === "AbortError") return;
      badge.textContent = `· stats stream broke (${error.message}): again in a moment`;
      await new Promise((resolve) => setTimeout(resolve, STATS_RETRY_MS));
    } finally {
      badge.dataset.live = "";
    }
  }
}

// ---- its requests --------------------------------------------------------------------------

function renderRequests() {
  const items = rows.items; // oldest first
  const table = $("#model-activity-table");
  table.tBodies[0].replaceChildren(...items.slice(-TABLE_ROWS).reverse().map(activityRow));
  const minute = 60_000;
  const buckets = new Map();
  for (const r of items) {
    const t = Math.floor(Date.parse(r.timestamp) / minute) * minute;
    buckets.set(t, (buckets.get(t) || 0) + 1);
  }
  const bars = [];
  if (buckets.size) {
    const last = Math.max(...buckets.keys());
    const first = Math.max(Math.min(...buckets.keys()), last - 59 * minute);
    for (let t = first; t <= last; t += minute) bars.push({ label: clock(t).slice(0, 5), value: buckets.get(t) || 0 });
  }
  columnChart($("#chart-model-requests"), { bars, empty: "no requests yet" });
  const speed = (key) => items.filter((r) => r.tokens[key] > 0).map((r) => [Date.parse(r.timestamp), r.tokens[key]]);
  lineChart($("#chart-model-speed"), { series: [{ name: "generation", points: speed("tokens_per_second") }],
    yFormat: (v) => rate(v), empty: "no speeds recorded" });
  lineChart($("#chart-model-prompt"), { series: [{ name: "prompt", points: speed("prompt_per_second"), color: PALETTE[1] }],
    yFormat: (v) => rate(v), empty: "no speeds recorded" });
}

const scheduleRequests = throttle(renderRequests, 500);

async function loadRequests() {
  const wanted = id;
  try {
    const page = await apiJson(`/api/metrics/activity?model=${encodeURIComponent(id)}&limit=${ROWS}`);
    if (wanted !== id) return;
    rows.clear();
    rows.push(...page.data.reverse());
    renderRequests();
  } catch (_) { /* the rest of the page stands */ }
}

// ---- the page -------------------------------------------------------------------------------

function onModels() {
  const m = store.model(id);
  renderHeader();
  const now = m ? m.container_name : null;
  if (now !== container) {
    // A new container (or none): its stats, its logs, its details.
    container = now;
    openStats();
    pane.open(`/logs/stream/${encodeURIComponent(id)}?tail=200`);
    refreshDetails();
    loadGpus();
  }
}

function show(route) {
  leaveModel();
  id = decodeURIComponent(route.parts.slice(1).join("/"));
  details = null;
  const m = store.model(id);
  container = m ? m.container_name : null;
  $("#model-status-line").textContent = "";
  $("#model-activity-link").setAttribute("href", `#/activity?model=${encodeURIComponent(id)}`);
  $("#model-logs-link").setAttribute("href", `#/logs/${encodeURIComponent(id)}`);
  activityHead($("#model-activity-table"));
  $("#model-activity-table").tBodies[0].replaceChildren();
  if (!pane) pane = new LogPane($("#model-logs"), { limit: 2000, height: "18rem" });
  renderHeader();
  unsubscribe = [store.on("models", onModels), store.on("tick", renderHeader),
    store.on("activity", (row) => { if (row.model === id) { rows.push(row); scheduleRequests(); refreshDetails(); } })];
  loadDetails();
  loadRequests();
  loadGpus();
  openStats();
  pane.open(`/logs/stream/${encodeURIComponent(id)}?tail=200`);
}

let wired = false;

export function enter(route) {
  if (!wired) {
    wired = true;
    $("#model-load").addEventListener("click", () => loadModel(id, $("#model-status-line")));
    $("#model-unload").addEventListener("click", () => unloadModel(id, $("#model-status-line")));
  }
  show(route);
}

export const update = show;

function leaveModel() {
  // Leaving the page closes the stats stream: the proxy closes the engine's at once.
  closeStats();
  if (pane) pane.close();
  unsubscribe.forEach((stop) => stop());
  unsubscribe = [];
}

export const leave = leaveModel;