// #/models: every configured model, live (state, container, GPUs, clocks, load and unload),
// with its request count and median generation speed, and the requests in flight.

import { $, api, apiJson, el, errorText, link, modelRoute, rate, seconds, throttle } from "./lib.js";
import { store } from "./state.js";

let unsubscribe = [];
let stats = {};
let rendered = false;

export const busy = (m) => ["starting", "stopping"].includes(m.state);
export const up = (m) => ["ready", "asleep", "starting"].includes(m.state);

export async function loadModel(id, statusLine) {
  statusLine.textContent = `loading ${id}…`;
  const response = await api(`/api/models/load/${encodeURIComponent(id)}`, { method: "POST" });
  statusLine.textContent = response.ok ? `${id} is ready` : `loading ${id} failed: ${await errorText(response)}`;
}

export async function unloadModel(id, statusLine) {
  const response = await api(`/api/models/unload/${encodeURIComponent(id)}`, { method: "POST" });
  statusLine.textContent = response.ok ? `${id} unloaded` : `unload failed: ${await errorText(response)}`;
}

function renderModels() {
  const body = $("#models-table tbody");
  const status = $("#swap-status");
  const rows = [];
  for (const m of store.models) {
    const s = stats[m.id];
    const p50 = s && s.tokens_per_second ? s.tokens_per_second.p50 : null;
    rows.push(el("tr", { "data-model": m.id },
      el("td", {}, link(modelRoute(m.id), el("strong", {}, m.id), { class: "model-link" }),
        m.name ? el("div", { class: "muted" }, m.name) : ""),
      el("td", {}, el("span", { class: `state ${m.state}` }, m.state)),
      el("td", { class: "container" }, m.container_name || "–"),
      el("td", {}, (m.gpus || []).join(", ") || "–"),
      el("td", { class: "num uptime" }, seconds(m.uptime_s)),
      el("td", { class: "num ttl-left" }, m.ttl ? seconds(m.ttl_left_s) : "never"),
      el("td", { class: "num" }, m.in_flight),
      el("td", { class: "num" }, m.waiting),
      el("td", { class: "num requests" }, s ? s.requests : 0),
      el("td", { class: "num" }, rate(p50)),
      el("td", { class: "actions" },
        el("button", { class: "load primary", "data-model": m.id, disabled: busy(m) || m.state === "ready",
          onclick: () => loadModel(m.id, status) }, "Load"), " ",
        el("button", { class: "unload", "data-model": m.id, disabled: !up(m) || busy(m),
          onclick: () => unloadModel(m.id, status) }, "Unload"), " ",
        link(`/logs/${encodeURIComponent(m.id)}`, "logs"))));
    if (m.failure) {
      rows.push(el("tr", { class: "failure-row" },
        el("td", { colspan: 11, class: "wrap" }, el("div", { class: "failure" }, m.failure))));
    }
  }
  body.replaceChildren(...rows);
  if (!rendered && store.models.length) {
    rendered = true;
    // The first paint with every model in it: what "time to first render" measures.
    requestAnimationFrame(() => performance.mark("models-rendered"));
  }
}

function renderClocks() {
  for (const m of store.models) {
    const row = document.querySelector(`#models-table tr[data-model="${CSS.escape(m.id)}"]`);
    if (!row) continue;
    $(".uptime", row).textContent = seconds(m.uptime_s);
    if (m.ttl) $(".ttl-left", row).textContent = seconds(m.ttl_left_s);
  }
}

function renderInflight() {
  const body = $("#inflight-table tbody");
  body.replaceChildren(...[...store.inflight.values()].map((r) => el("tr", { "data-request": r.id },
    el("td", {}, r.id), el("td", {}, link(modelRoute(r.model), r.model)), el("td", {}, r.path), el("td", {}, r.client),
    el("td", { class: "num" }, seconds(r.elapsed_s)), el("td", { class: "num" }, r.bytes),
    el("td", {}, el("button", { class: "cancel", onclick: () => api(`/api/inflight/${encodeURIComponent(r.id)}/cancel`, { method: "POST" }) }, "Cancel")))));
  $("#inflight-empty").hidden = store.inflight.size > 0;
}

async function loadStats() {
  try {
    stats = (await apiJson("/api/metrics/stats")).models || {};
    renderModels();
  } catch (_) { /* the table shows without them */ }
}

const refreshStats = throttle(loadStats, 3000);

export function enter() {
  renderModels();
  renderInflight();
  unsubscribe = [store.on("models", renderModels), store.on("inflight", renderInflight),
    store.on("tick", renderClocks), store.on("activity", refreshStats),
    store.on("swap", (data) => {
      $("#swap-status").textContent = data.phase === "start"
        ? `${data.wake ? "waking" : "starting"} ${data.model}${data.evicted.length ? ` (evicting ${data.evicted.join(", ")})` : ""}…`
        : data.ok ? `${data.model} ready in ${data.seconds.toFixed(1)} s` : `${data.model} failed: ${data.error}`;
    }),
    store.on("pull", (data) => {
      $("#swap-status").textContent = `pulling ${data.image}: ${data.fraction === null ? data.status : Math.round(data.fraction * 100) + " %"}`;
    })];
  loadStats();
}

export function leave() {
  unsubscribe.forEach((stop) => stop());
  unsubscribe = [];
}
