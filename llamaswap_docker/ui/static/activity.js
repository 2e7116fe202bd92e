// #/activity?model=…&status=…&sort=…&order=…&page=…&limit=…: one page of the proxy's
// activity (the newest rows come in live on the first page; older ones are paged from
// /api/metrics/activity), filters and sort in the URL, tok/s histograms per model
// (llama-swap's /api/metrics/stats shape), and a CSV export of everything the filter matches.

import { $, apiJson, csv, download, el, link, modelRoute, throttle } from "./lib.js";
import { histogramChart, PALETTE } from "./charts.js";
import { navigate, store } from "./state.js";
import { activityHead, activityRow, CSV_HEADER, csvRow, statusMatches } from "./activitytable.js";

// Rows the CSV export reads at most (1,000 a request).
const EXPORT_MAX = 100_000;
// Models whose histograms are drawn when no model is picked.
const HISTOGRAM_MODELS = 6;

let query = null;
let total = 0;
let unseen = 0;
let unsubscribe = [];

function readQuery(route) {
  const p = route.params;
  return {
    models: p.getAll("model").filter(Boolean),
    status: p.get("status") || "",
    sort: p.get("sort") || "id",
    order: p.get("order") === "asc" ? "asc" : "desc",
    page: Math.max(1, Number(p.get("page")) || 1),
    limit: Math.min(200, Math.max(1, Number(p.get("limit")) || 50)),
  };
}

function routeOf(q) {
  const p = new URLSearchParams();
  for (const m of q.models) p.append("model", m);
  if (q.status) p.set("status", q.status);
  if (q.sort !== "id") p.set("sort", q.sort);
  if (q.order !== "desc") p.set("order", q.order);
  if (q.page > 1) p.set("page", q.page);
  if (q.limit !== 50) p.set("limit", q.limit);
  const text = p.toString();
  return `/activity${text ? `?${text}` : ""}`;
}

export const activityRoute = (change) => routeOf({ ...(query || readQuery({ params: new URLSearchParams() })), page: 1, ...change });

function apiParams(q, page = q.page, limit = q.limit) {
  const p = new URLSearchParams();
  for (const m of q.models) p.append("model", m);
  if (q.status) p.set("status", q.status);
  p.set("sort", q.sort); p.set("order", q.order); p.set("page", page); p.set("limit", limit);
  return p;
}

function setControls(q) {
  const select = $("#filter-model");
  const ids = new Set([...store.models.map((m) => m.id), ...q.models]);
  select.replaceChildren(el("option", { value: "" }, "every model"), ...[...ids].sort().map((id) => el("option", { value: id }, id)));
  select.value = q.models.length === 1 ? q.models[0] : "";
  $("#filter-status").value = q.status;
  $("#filter-limit").value = String(q.limit);
}

// Rows that came live while a page was being read are not in its count: read it again then.
let loading = false;
let missed = false;

async function load() {
  const q = query;
  const table = $("#activity-table");
  activityHead(table, { sort: q.sort, order: q.order, onSort: (key) =>
    navigate(routeOf({ ...q, page: 1, sort: key, order: key === q.sort && q.order === "desc" ? "asc" : "desc" })) });
  let page;
  loading = true;
  missed = false;
  try {
    page = await apiJson(`/api/metrics/activity?${apiParams(q)}`);
  } catch (error) {
    $("#activity-page").textContent = `error: ${error.message}`;
    return;
  } finally {
    loading = false;
  }
  if (q !== query) return; // the URL changed meanwhile
  total = page.total;
  unseen = 0;
  table.tBodies[0].replaceChildren(...page.data.map(activityRow));
  renderPager();
  if (missed) reloadSoon();
}

const reloadSoon = throttle(() => { if (query) load(); }, 500);

function renderPager() {
  const pages = Math.max(1, Math.ceil(total / query.limit));
  $("#activity-page").textContent = `page ${query.page} of ${pages} · ${total} requests`;
  $("#activity-prev").disabled = query.page <= 1;
  $("#activity-next").disabled = query.page >= pages;
  $("#activity-new").replaceChildren(unseen ? link(routeOf({ ...query, page: 1 }), `${unseen} newer request${unseen === 1 ? "" : "s"}`, {
    onclick: () => { if (query.page === 1) load(); } }) : "");
}

// The first page in the default order takes new rows live and stays `limit` rows long.
function onActivity(row) {
  const q = query;
  if (q.models.length && !q.models.includes(row.model)) return;
  if (!statusMatches(q.status, row.resp_status_code)) return;
  if (loading) { missed = true; return; }
  total += 1;
  const body = $("#activity-table").tBodies[0];
  if (q.page === 1 && q.sort === "id" && q.order === "desc") {
    body.prepend(activityRow(row));
    while (body.rows.length > q.limit) body.lastElementChild.remove();
  } else {
    unseen += 1;
  }
  renderPager();
  refreshHistograms();
}

async function loadHistograms() {
  const q = query;
  const box = $("#activity-histograms");
  let stats;
  try {
    stats = await apiJson(q.models.length === 1 ? `/api/metrics/stats?model=${encodeURIComponent(q.models[0])}` : "/api/metrics/stats");
  } catch (_) { return; }
  const names = Object.keys(stats.models || {}).filter((m) => !q.models.length || q.models.includes(m));
  const withData = names.filter((m) => stats.models[m].prompt_histogram || stats.models[m].gen_histogram);
  withData.sort((a, b) => stats.models[b].requests - stats.models[a].requests);
  const shown = withData.slice(0, HISTOGRAM_MODELS);
  const figures = [];
  shown.forEach((m) => {
    for (const [key, label, color] of [["prompt_histogram", "prompt", PALETTE[1]], ["gen_histogram", "generation", PALETTE[0]]]) {
      const box = el("div", { class: "chart-box" });
      figures.push(el("figure", { "data-model": m, "data-histogram": key },
        el("figcaption", {}, link(modelRoute(m), m), ` · ${label} tok/s`), box));
      requestAnimationFrame(() => histogramChart(box, { histogram: stats.models[m][key], color }));
    }
  });
  if (!shown.length) figures.push(el("p", { class: "muted" }, "No tok/s recorded yet for these requests."));
  if (withData.length > shown.length) {
    figures.push(el("p", { class: "muted" }, `…and ${withData.length - shown.length} more models: pick one above.`));
  }
  box.replaceChildren(...figures);
}

const refreshHistograms = throttle(loadHistograms, 5000);

async function exportCsv() {
  const button = $("#activity-export");
  const q = query;
  const rows = [CSV_HEADER];
  button.disabled = true;
  try {
    for (let page = 1; rows.length - 1 < EXPORT_MAX; page++) {
      button.textContent = `Exporting… ${rows.length - 1}`;
      const result = await apiJson(`/api/metrics/activity?${apiParams(q, page, 1000)}`);
      rows.push(...result.data.map(csvRow));
      if (page >= result.total_pages || !result.data.length) break;
    }
    download("activity.csv", csv(rows));
    button.dataset.rows = rows.length - 1;
  } finally {
    button.disabled = false;
    button.textContent = "Export CSV";
  }
}

let wired = false;

function wire() {
  if (wired) return;
  wired = true;
  $("#filter-model").addEventListener("change", (e) => navigate(routeOf({ ...query, page: 1, models: e.target.value ? [e.target.value] : [] })));
  $("#filter-status").addEventListener("change", (e) => navigate(routeOf({ ...query, page: 1, status: e.target.value })));
  $("#filter-limit").addEventListener("change", (e) => navigate(routeOf({ ...query, page: 1, limit: Number(e.target.value) })));
  $("#activity-prev").addEventListener("click", () => navigate(routeOf({ ...query, page: query.page - 1 })));
  $("#activity-next").addEventListener("click", () => navigate(routeOf({ ...query, page: query.page + 1 })));
  $("#activity-export").addEventListener("click", exportCsv);
  $("#activity-filters").addEventListener("submit", (e) => e.preventDefault());
}

export function update(route) {
  query = readQuery(route);
  setControls(query);
  load();
  loadHistograms();
}

export function enter(route) {
  wire();
  // Events the proxy dropped for this page (it fell behind): the page is read again.
  unsubscribe = [store.on("activity", onActivity), store.on("dropped", () => { load(); refreshHistograms(); })];
  update(route);
}

export function leave() {
  unsubscribe.forEach((stop) => stop());
  unsubscribe = [];
}
