// Shared pieces of the UI: API access (with the key), DOM building, formatting, SSE over
// fetch, and a bounded ring. Plain ES modules served by the proxy: no build step, no CDN.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

// ---- API access (with the key, when the proxy asks for one) ----------------------------

export function headers(extra = {}) {
  const key = localStorage.getItem("llamaswap-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

let asking = null;

async function askForKey() {
  // One dialog for every request that got a 401 at the same moment.
  if (!asking) {
    asking = (async () => {
      const dialog = $("#key-dialog");
      dialog.showModal();
      await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
      localStorage.setItem("llamaswap-key", $("#key-input").value);
    })().finally(() => { asking = null; });
  }
  return asking;
}

export async function api(path, options = {}) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    if (response.status !== 401 || attempt === 1) return response;
    await askForKey();
  }
}

export async function apiJson(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

export async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

// ---- DOM -----------------------------------------------------------------------------------

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A link to another view (hash routes: back and forward work, and every view has a URL).
export const link = (route, text, attributes = {}) => el("a", { href: `#${route}`, ...attributes }, text);

export const modelRoute = (id) => `/models/${encodeURIComponent(id)}`;

// ---- formatting ------------------------------------------------------------------------------

export function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 60) return `${Math.round(value)} s`;
  if (value < 3600) return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
  return `${Math.floor(value / 3600)} h ${Math.round((value % 3600) / 60)} min`;
}

export const count = (value) => (value === null || value === undefined || value < 0 ? "–" : String(value));
export const rate = (value) => (value === null || value === undefined || value < 0 ? "–" : Number(value).toFixed(1));
export const ms = (value) => (value === null || value === undefined ? "–"
  : value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(2)} s`);

export function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let index = 0;
  let amount = value;
  while (Math.abs(amount) >= 1024 && index < units.length - 1) { amount /= 1024; index++; }
  const digits = amount !== 0 && Math.abs(amount) < 10 && (index || !Number.isInteger(amount)) ? 1 : 0;
  return `${amount.toFixed(digits)} ${units[index]}`;
}

export const clock = (epochMs) => new Date(epochMs).toLocaleTimeString([], { hour12: false });
export const dateTime = (epochMs) => new Date(epochMs).toLocaleString([], { hour12: false });

// ---- SSE over fetch (EventSource cannot send the API key) ----------------------------------

export async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload && payload !== "[DONE]") onData(JSON.parse(payload));
      }
    }
  }
}

// Text lines of a streamed response, as they come (a partial last line waits for its end).
export async function readLines(response, onLines, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  for (;;) {
    if (signal && signal.aborted) return;
    const { value, done } = await reader.read();
    if (done) { if (rest) onLines([rest]); return; }
    const text = rest + decoder.decode(value, { stream: true });
    const lines = text.split("\n");
    rest = lines.pop();
    if (lines.length) onLines(lines);
  }
}

// ---- bounded ring ------------------------------------------------------------------------------

// The newest `limit` items: a page left open for a day holds no more than that.
export class Ring {
  constructor(limit) { this.limit = limit; this.items = []; this.dropped = 0; }
  push(...items) {
    this.items.push(...items);
    const over = this.items.length - this.limit;
    if (over > 0) { this.items.splice(0, over); this.dropped += over; }
  }
  clear() { this.items = []; this.dropped = 0; }
  get length() { return this.items.length; }
  last() { return this.items[this.items.length - 1]; }
}

// Run `render` at most once per `wait` ms however often `schedule` is called.
export function throttle(render, wait = 250) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => { timer = null; render(); }, wait);
  };
}

// CSV as RFC 4180 writes it: quotes around fields with commas, quotes or line breaks.
export function csv(rows) {
  const field = (value) => {
    const text = value === null || value === undefined ? "" : String(value);
    return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  return rows.map((row) => row.map(field).join(",")).join("\r\n") + "\r\n";
}

export function download(name, text, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const anchor = el("a", { href: url, download: name, hidden: true });
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
