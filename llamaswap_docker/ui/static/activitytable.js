// The activity table, shared by the Activity page and the model pages: llama-swap's row
// fields, a sort on every column (its API's sort keys), a link to each request's capture.

import { count, el, link, modelRoute, ms, rate } from "./lib.js";

// [label, sort key of /api/metrics/activity, cell]
export const COLUMNS = [
  ["#", "id", (r) => el("td", { class: "num" }, r.id)],
  ["Time", "time", (r) => el("td", { title: r.timestamp }, new Date(r.timestamp).toLocaleTimeString([], { hour12: false }))],
  ["Model", "model", (r) => el("td", {}, link(modelRoute(r.model), r.model))],
  ["Path", "req_path", (r) => el("td", {}, r.req_path)],
  ["Status", "resp_status_code", (r) => el("td", { class: `num status ${r.resp_status_code >= 400 ? "bad" : ""}` }, r.resp_status_code)],
  ["Wait", "wait", (r) => el("td", { class: "num" }, ms(r.wait_ms))],
  ["Duration", "duration", (r) => el("td", { class: "num" }, ms(r.duration_ms))],
  ["In", "prompt", (r) => el("td", { class: "num" }, count(r.tokens.input_tokens))],
  ["Out", "generated", (r) => el("td", { class: "num" }, count(r.tokens.output_tokens))],
  ["Cached", "cached", (r) => el("td", { class: "num" }, count(r.tokens.cache_tokens))],
  ["Prompt tok/s", "prompt_speed", (r) => el("td", { class: "num prompt-rate" }, rate(r.tokens.prompt_per_second))],
  ["Gen tok/s", "gen_speed", (r) => el("td", { class: "num gen-rate" }, rate(r.tokens.tokens_per_second))],
  ["", null, (r) => el("td", {}, r.has_capture ? el("a", { href: `/api/captures/${r.id}`, target: "_blank" }, "capture") : "")],
];

export function activityRow(row) {
  return el("tr", { "data-id": row.id }, ...COLUMNS.map(([, , cell]) => cell(row)));
}

// Header cells; `onSort(key)` when one is clicked (none: not sortable here).
export function activityHead(table, { sort = "id", order = "desc", onSort = null } = {}) {
  table.tHead.replaceChildren(el("tr", {}, ...COLUMNS.map(([label, key]) => {
    const active = key === sort;
    const arrow = active ? (order === "asc" ? " ▲" : " ▼") : "";
    return el("th", { "data-sort": key, class: onSort && key ? "sortable" : null,
      "aria-sort": active ? (order === "asc" ? "ascending" : "descending") : null,
      onclick: onSort && key ? () => onSort(key) : null }, label + arrow);
  })));
}

export function statusMatches(filter, status) {
  if (!filter) return true;
  if (filter === "ok") return status < 400;
  if (filter === "error") return status >= 400;
  if (/^[1-5]xx$/.test(filter)) return Math.floor(status / 100) === Number(filter[0]);
  return String(status) === filter;
}

export const CSV_HEADER = ["id", "timestamp", "model", "req_path", "resp_status_code", "resp_content_type",
  "wait_ms", "duration_ms", "input_tokens", "output_tokens", "cache_tokens", "prompt_per_second",
  "tokens_per_second", "has_capture"];

export const csvRow = (r) => [r.id, r.timestamp, r.model, r.req_path, r.resp_status_code, r.resp_content_type,
  r.wait_ms, r.duration_ms, r.tokens.input_tokens, r.tokens.output_tokens, r.tokens.cache_tokens,
  r.tokens.prompt_per_second, r.tokens.tokens_per_second, r.has_capture];
