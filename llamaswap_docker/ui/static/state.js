// The live state every view reads (models, requests in flight, recent activity), filled
// from GET /api/events by app.js, and the URL helpers views use to change their own URL.

import { api, Ring } from "./lib.js";

// Activity rows kept from the live stream, for the charts of the model pages.
const RECENT_ROWS = 1000;

export const store = {
  models: [],
  inflight: new Map(),
  recent: new Ring(RECENT_ROWS),
  // model id → llama-swap's capability flags, from /v1/models.
  capabilities: new Map(),
  listeners: new Map(),
  connected: false,
  on(kind, listener) {
    if (!this.listeners.has(kind)) this.listeners.set(kind, new Set());
    this.listeners.get(kind).add(listener);
    return () => this.listeners.get(kind).delete(listener);
  },
  emit(kind, data) {
    for (const listener of this.listeners.get(kind) || []) {
      try { listener(data); } catch (error) { console.error(error); }
    }
  },
  model(id) { return this.models.find((m) => m.id === id); },
};

export async function loadCapabilities() {
  const response = await api("/v1/models");
  if (!response.ok) return;
  const body = await response.json();
  store.capabilities = new Map((body.data || []).map((m) => [m.id, { ...(m.capabilities || {}),
    input: (m.architecture && m.architecture.input_modalities) || [],
    output: (m.architecture && m.architecture.output_modalities) || [] }]));
  store.emit("capabilities", store.capabilities);
}

// ---- URLs ------------------------------------------------------------------------------------

export function parseRoute(hash = location.hash) {
  const [path, query = ""] = hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  return { path, parts, params: new URLSearchParams(query) };
}

// A view changes its own URL (filters, paging): a new history entry unless `replace`.
export function navigate(route, { replace = false } = {}) {
  const hash = `#${route}`;
  if (hash === location.hash) return;
  if (replace) { history.replaceState(null, "", hash); window.dispatchEvent(new HashChangeEvent("hashchange")); } else location.hash = hash;
}

