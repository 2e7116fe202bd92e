// Small hand-written SVG charts: lines over time, histograms, columns and a timeline of
// lanes. No library: each chart is redrawn whole from its data (a few hundred points at
// most), sized to its container's width. Every chart carries data-kind and data-points, so
// tests (and curious users) can see what it drew.

import { clock, el } from "./lib.js";

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2a62d6", "#d9822b", "#1f8a4c", "#c0392b", "#7b4fd6", "#1b8a9a", "#8a6d1f", "#d64f9a"];
export const STATE_COLORS = { starting: "#e0a33a", ready: "#1f8a4c", stopping: "#b0b0b8",
  asleep: "#1b8a9a", failed: "#c0392b" };

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const text = (x, y, content, attributes = {}) => svg("text", { x, y, ...attributes }, document.createTextNode(content));

function frame(target, kind, height, points) {
  const width = Math.max(240, Math.floor(target.clientWidth || 600));
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width: "100%", height,
    role: "img", "data-kind": kind, "data-points": points });
  return { root, width, height };
}

function empty(target, kind, height, message) {
  const { root, width } = frame(target, kind, height, 0);
  root.append(text(width / 2, height / 2, message, { "text-anchor": "middle", class: "chart-empty" }));
  target.replaceChildren(root);
  return root;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * magnitude) return step * magnitude;
  return 10 * magnitude;
}

function decimate(points, stride) {
  const kept = [];
  for (let i = 0; i < points.length; i += stride) {
    let low = points[i], high = points[i];
    for (const p of points.slice(i, i + stride)) { if (p[1] < low[1]) low = p; if (p[1] > high[1]) high = p; }
    if (low === high) kept.push(low); else kept.push(...(low[0] <= high[0] ? [low, high] : [high, low]));
  }
  return kept;
}

// Lines over time: series [{name, color, points: [[epochMs, value], ...]}].
export function lineChart(target, { series, height = 150, yFormat = String, xFormat = clock,
  yMax = null, domain = null, empty: emptyText = "no data yet", title = null }) {
  const all = series.flatMap((s) => s.points);
  if (!all.length) return empty(target, "line", height, emptyText);
  const [x0, x1] = domain || [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const top = yMax ?? niceMax(Math.max(...all.map((p) => p[1])) * 1.05);
  const { root, width } = frame(target, "line", height, all.length);
  const left = 56, right = 8, upper = 8, lower = 20;
  const plotW = width - left - right, plotH = height - upper - lower;
  const sx = (x) => left + (x1 === x0 ? plotW : ((x - x0) / (x1 - x0)) * plotW);
  const sy = (y) => upper + plotH - (Math.max(0, Math.min(y, top)) / top) * plotH;
  if (title) root.append(svg("title", {}, document.createTextNode(title)));
  for (let i = 0; i <= 3; i++) {
    const value = (top * i) / 3;
    const y = sy(value);
    root.append(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }),
      text(left - 6, y + 4, yFormat(value), { "text-anchor": "end", class: "axis" }));
  }
  // One point in time (a first reading) gets one label, not three on top of each other.
  const ticks = x1 === x0 ? [[x1, "end"]] : [[x0, "start"], [(x0 + x1) / 2, "middle"], [x1, "end"]];
  for (const [x, anchor] of ticks) {
    root.append(text(sx(x), height - 5, xFormat(x), { "text-anchor": anchor, class: "axis" }));
  }
  series.forEach((s, index) => {
    if (!s.points.length) return;
    // A pixel column shows at most its lowest and highest point: spikes stay visible.
    const stride = Math.max(1, Math.floor(s.points.length / plotW));
    const kept = stride === 1 ? s.points : decimate(s.points, stride);
    const color = s.color || PALETTE[index % PALETTE.length];
    root.append(svg("polyline", { points: kept.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "),
      fill: "none", stroke: color, "stroke-width": 1.6, "data-series": s.name }));
    if (s.points.length === 1) root.append(svg("circle", { cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 3, fill: color }));
  });
  const cursor = svg("line", { y1: upper, y2: upper + plotH, class: "cursor", visibility: "hidden" });
  root.append(cursor);
  const legend = el("div", { class: "legend" });
  const showAt = (x) => {
    legend.replaceChildren(...series.map((s, index) => {
      let nearest = s.points[s.points.length - 1];
      if (x !== null) for (const p of s.points) if (Math.abs(p[0] - x) < Math.abs(nearest[0] - x)) nearest = p;
      const color = s.color || PALETTE[index % PALETTE.length];
      return el("span", { class: "key" }, el("i", { style: `background:${color}` }), `${s.name} `,
        el("b", {}, nearest ? yFormat(nearest[1]) : "–"));
    }), x !== null ? el("span", { class: "muted" }, xFormat(x)) : "");
  };
  root.addEventListener("mousemove", (event) => {
    const box = root.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * width;
    if (px < left) return;
    cursor.setAttribute("x1", px); cursor.setAttribute("x2", px); cursor.setAttribute("visibility", "visible");
    showAt(x0 + ((px - left) / plotW) * (x1 - x0));
  });
  root.addEventListener("mouseleave", () => { cursor.setAttribute("visibility", "hidden"); showAt(null); });
  showAt(null);
  target.replaceChildren(root, legend);
  return root;
}

// llama-swap's histogram shape: {bins, min, max, binSize, p50, p95, p99}.
export function histogramChart(target, { histogram, height = 130, color = PALETTE[0], unit = "tok/s",
  empty: emptyText = "no speeds recorded" }) {
  if (!histogram || !histogram.bins || !histogram.bins.length) return empty(target, "histogram", height, emptyText);
  const { bins, min, max, binSize } = histogram;
  const total = bins.reduce((a, b) => a + b, 0);
  const { root, width } = frame(target, "histogram", height, total);
  const left = 8, right = 8, upper = 16, lower = 20;
  const plotW = width - left - right, plotH = height - upper - lower;
  const top = Math.max(...bins);
  const span = max - min || 1;
  const barW = plotW / bins.length;
  bins.forEach((value, i) => {
    const h = (value / top) * plotH;
    const from = min + i * binSize, to = binSize ? from + binSize : max;
    root.append(svg("rect", { x: left + i * barW + 1, y: upper + plotH - h, width: Math.max(1, barW - 2), height: h,
      fill: color, opacity: 0.8, "data-count": value },
      svg("title", {}, document.createTextNode(`${from.toFixed(1)}–${to.toFixed(1)} ${unit}: ${value}`))));
  });
  const sx = (v) => left + (binSize ? ((v - min) / span) * plotW : plotW / 2);
  let labelled = -Infinity;
  for (const [name, value] of [["p50", histogram.p50], ["p95", histogram.p95], ["p99", histogram.p99]]) {
    if (value === undefined || value === null) continue;
    const x = sx(value);
    root.append(svg("line", { x1: x, x2: x, y1: upper - 4, y2: upper + plotH, class: "marker" }));
    // Labels too close to the previous one would overlap it: the legend has every value.
    if (x - labelled > 24) { root.append(text(x, upper - 5, name, { "text-anchor": "middle", class: "axis" })); labelled = x; }
  }
  root.append(text(left, height - 5, `${min.toFixed(1)}`, { class: "axis" }),
    text(width - right, height - 5, `${max.toFixed(1)} ${unit}`, { "text-anchor": "end", class: "axis" }));
  const legend = el("div", { class: "legend" }, `${total} requests · p50 ${histogram.p50.toFixed(1)} · p95 ${histogram.p95.toFixed(1)} · p99 ${histogram.p99.toFixed(1)} ${unit}`);
  target.replaceChildren(root, legend);
  return root;
}

// Columns: bars [{label, value, color?, title?}] (load durations, requests per minute).
export function columnChart(target, { bars, height = 130, yFormat = String, empty: emptyText = "nothing yet" }) {
  if (!bars.length) return empty(target, "columns", height, emptyText);
  const { root, width } = frame(target, "columns", height, bars.length);
  const left = 56, right = 8, upper = 8, lower = 20;
  const plotW = width - left - right, plotH = height - upper - lower;
  const top = niceMax(Math.max(...bars.map((b) => b.value)) * 1.05);
  for (let i = 0; i <= 2; i++) {
    const y = upper + plotH - (plotH * i) / 2;
    root.append(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }),
      text(left - 6, y + 4, yFormat((top * i) / 2), { "text-anchor": "end", class: "axis" }));
  }
  const barW = Math.min(48, plotW / bars.length);
  bars.forEach((bar, i) => {
    const h = (Math.max(0, bar.value) / top) * plotH;
    root.append(svg("rect", { x: left + i * barW + 1, y: upper + plotH - h, width: Math.max(1, barW - 2), height: h,
      fill: bar.color || PALETTE[0] }, svg("title", {}, document.createTextNode(bar.title || `${bar.label}: ${yFormat(bar.value)}`))));
  });
  const first = bars[0].label, last = bars[bars.length - 1].label;
  root.append(text(left, height - 5, first, { class: "axis" }));
  if (bars.length > 1) root.append(text(width - right, height - 5, last, { "text-anchor": "end", class: "axis" }));
  target.replaceChildren(root);
  return root;
}

// Lanes over time: segments [{lane, start, end, color, title}] (epoch ms; end null: now).
export function timelineChart(target, { lanes, segments, start, end, laneHeight = 22, xFormat = clock,
  empty: emptyText = "nothing ran yet" }) {
  if (!lanes.length) return empty(target, "timeline", 60, emptyText);
  const height = 24 + lanes.length * laneHeight;
  const { root, width } = frame(target, "timeline", height, segments.length);
  const left = Math.min(180, 20 + 7 * Math.max(...lanes.map((l) => l.length))), right = 8;
  const plotW = width - left - right;
  const span = Math.max(1, end - start);
  const sx = (t) => left + ((Math.min(Math.max(t, start), end) - start) / span) * plotW;
  lanes.forEach((lane, i) => {
    const y = 4 + i * laneHeight;
    root.append(svg("line", { x1: left, x2: width - right, y1: y + laneHeight - 2, y2: y + laneHeight - 2, class: "grid" }),
      text(left - 6, y + laneHeight / 2 + 4, lane, { "text-anchor": "end", class: "lane" }));
  });
  const index = new Map(lanes.map((lane, i) => [lane, i]));
  for (const segment of segments) {
    const i = index.get(segment.lane);
    if (i === undefined) continue;
    const x = sx(segment.start), x2 = sx(segment.end ?? end);
    root.append(svg("rect", { x, y: 6 + i * laneHeight, width: Math.max(1.5, x2 - x), height: laneHeight - 10,
      rx: 2, fill: segment.color || PALETTE[0], "data-lane": segment.lane, "data-state": segment.state || null },
      svg("title", {}, document.createTextNode(segment.title || ""))));
  }
  for (const [t, anchor] of [[start, "start"], [(start + end) / 2, "middle"], [end, "end"]]) {
    root.append(text(sx(t), height - 4, xFormat(t), { "text-anchor": anchor, class: "axis" }));
  }
  target.replaceChildren(root);
  return root;
}
