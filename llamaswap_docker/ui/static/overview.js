// #/overview: which model ran when (a timeline of model states), and the proxy itself over the
// last 15 minutes: requests per second, CPU, resident memory, event-loop lag, and the host's
// CPU and memory (llama-swap's sys_stats). Read from /api/timeline and /api/performance every
// two seconds while this page is open, and not otherwise.

import { $, apiJson, bytes, el, link, modelRoute, seconds } from "./lib.js";
import { lineChart, PALETTE, STATE_COLORS, timelineChart } from "./charts.js";
import { store } from "./state.js";

const REFRESH_MS = 2000;
// Samples kept in the page (the proxy keeps as many: 15 minutes at one a second).
const SAMPLES = 900;
// The timeline shows the last half hour at most.
const WINDOW_MS = 30 * 60_000;

let timer = null;
let proxy = [];
let system = [];
let last = null;
let startedAt = null;

function card(label, value, id) {
  return el("div", { class: "card stat", id }, el("div", { class: "muted" }, label), el("div", { class: "big" }, value));
}

async function refresh() {
  try {
    const after = last ? `?after=${encodeURIComponent(last)}` : "";
    const [perf, timeline, stats] = await Promise.all([
      apiJson(`/api/performance${after}`), apiJson("/api/timeline"), apiJson("/api/metrics/stats")]);
    startedAt = perf.started_at;
    proxy = proxy.concat(perf.proxy_stats).slice(-SAMPLES);
    system = system.concat(perf.sys_stats).slice(-SAMPLES);
    if (proxy.length) last = proxy[proxy.length - 1].timestamp;
    renderCards(stats, timeline);
    renderTimeline(timeline);
    renderCharts();
  } catch (error) {
    $("#overview-cards").replaceChildren(el("p", { class: "muted" }, `error: ${error.message}`));
  }
}

function renderCards(stats, timeline) {
  const latest = proxy[proxy.length - 1] || {};
  const totals = stats.totals || {};
  const ready = store.models.filter((m) => m.state === "ready").length;
  $("#overview-cards").replaceChildren(
    card("Requests", totals.requests ?? 0, "card-requests"),
    card("Tokens in / out", `${totals.input_tokens ?? 0} / ${totals.output_tokens ?? 0}`, "card-tokens"),
    card("Model loads", timeline.loads.length, "card-loads"),
    card("Models ready", `${ready} of ${store.models.length}`, "card-ready"),
    card("Proxy up", seconds(startedAt ? Date.now() / 1000 - startedAt : null), "card-uptime"),
    card("Event-loop lag (max, 1 s)", `${(latest.loop_lag_ms ?? 0).toFixed(1)} ms`, "card-lag"),
    card("Container stats streams", latest.stats_streams ?? 0, "card-streams"));
}

function renderTimeline(timeline) {
  const now = timeline.now * 1000;
  const start = Math.max(timeline.since * 1000, now - WINDOW_MS);
  const segments = timeline.segments.filter((s) => s.end === null || s.end * 1000 > start);
  const lanes = [...new Set(segments.map((s) => s.model))].sort();
  timelineChart($("#chart-timeline"), {
    lanes, start: Math.min(start, now - 60_000), end: now,
    segments: segments.map((s) => ({ lane: s.model, state: s.state, start: s.start * 1000,
      end: s.end === null ? null : s.end * 1000, color: STATE_COLORS[s.state] || PALETTE[0],
      title: `${s.model} ${s.state} ${new Date(s.start * 1000).toLocaleTimeString([], { hour12: false })}` +
        (s.end === null ? " – now" : ` for ${seconds(s.end - s.start)}`) })),
    empty: "no model has run since the proxy started",
  });
  const legend = el("div", { class: "legend" }, ...Object.entries(STATE_COLORS).map(([state, color]) =>
    el("span", { class: "key" }, el("i", { style: `background:${color}` }), state)),
  ...lanes.map((lane) => el("span", { class: "key" }, link(modelRoute(lane), lane))));
  $("#chart-timeline").append(legend);
}

function renderCharts() {
  const t = (s) => Date.parse(s.timestamp);
  lineChart($("#chart-rps"), { series: [{ name: "requests/s", points: proxy.map((s) => [t(s), s.requests_per_second]) },
    { name: "in flight", points: proxy.map((s) => [t(s), s.in_flight]), color: PALETTE[1] }], yFormat: (v) => v.toFixed(1) });
  lineChart($("#chart-proxy-cpu"), { series: [{ name: "CPU", points: proxy.map((s) => [t(s), s.cpu_percent]) }],
    yFormat: (v) => `${v.toFixed(0)} %` });
  lineChart($("#chart-proxy-memory"), { series: [{ name: "resident", points: proxy.map((s) => [t(s), s.rss_bytes]), color: PALETTE[1] }],
    yFormat: bytes });
  lineChart($("#chart-lag"), { series: [{ name: "max", points: proxy.map((s) => [t(s), s.loop_lag_ms]), color: PALETTE[3] },
    { name: "mean", points: proxy.map((s) => [t(s), s.loop_lag_mean_ms]) }], yFormat: (v) => `${v.toFixed(1)} ms` });
  const average = (values) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : 0);
  lineChart($("#chart-host-cpu"), { series: [{ name: "all cores", points: system.map((s) => [t(s), average(s.cpu_util_per_core)]) }],
    yFormat: (v) => `${v.toFixed(0)} %`, yMax: 100, empty: "no host readings (not Linux?)" });
  lineChart($("#chart-host-memory"), { series: [{ name: "used", points: system.map((s) => [t(s), s.mem_used_mb * 1048576]), color: PALETTE[2] }],
    yFormat: bytes, yMax: system.length ? system[system.length - 1].mem_total_mb * 1048576 : null, empty: "no host readings (not Linux?)" });
}

export function enter() {
  proxy = []; system = []; last = null;
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

export function leave() {
  clearInterval(timer);
  timer = null;
}
