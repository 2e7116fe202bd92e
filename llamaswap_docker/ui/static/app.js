// llamaswap-docker web UI: plain JavaScript modules served by the proxy, nothing fetched
// elsewhere. Live state comes from GET /api/events (read with fetch, so an API key can be
// sent); each view has a URL (#/models, #/models/<id>, #/activity?…, #/overview, #/logs/<id>,
// #/playground/<tab>), so back and forward work and any view can be linked to.

import { $, $$, api, errorText, readEvents } from "./lib.js";
import { loadCapabilities, navigate, parseRoute, store } from "./state.js";
import * as models from "./models.js";
import * as model from "./model.js";
import * as activity from "./activity.js";
import * as overview from "./overview.js";
import * as logs from "./logs.js";
import * as playground from "./playground.js";

// ---- routing -------------------------------------------------------------------------------

const VIEWS = { models, model, activity, overview, logs, playground };

function viewFor(route) {
  const [first, ...rest] = route.parts;
  if (!first) return null;
  if (first === "models") return rest.length ? "model" : "models";
  return VIEWS[first] ? first : "missing";
}

let current = null;

function render() {
  const route = parseRoute();
  const name = viewFor(route);
  if (name === null) { history.replaceState(null, "", "#/models"); return render(); }
  if (current && current.name === name && VIEWS[name] && VIEWS[name].update) {
    // The same view with other parameters (a filter, another model): it adjusts in place.
    VIEWS[name].update(route);
  } else {
    if (current && VIEWS[current.name]) VIEWS[current.name].leave();
    $$(".view").forEach((section) => { section.hidden = section.id !== `view-${name}`; });
    $$("nav .tab").forEach((tab) => tab.classList.toggle("active", tab.dataset.view === (name === "model" ? "models" : name)));
    if (VIEWS[name]) VIEWS[name].enter(route);
  }
  current = { name, route };
  document.title = `${titleOf(name, route)} · llamaswap-docker`;
}

function titleOf(name, route) {
  if (name === "model" || (name === "logs" && route.parts[1])) return decodeURIComponent(route.parts.slice(1).join("/"));
  return name[0].toUpperCase() + name.slice(1);
}

window.addEventListener("hashchange", render);

// ---- live events --------------------------------------------------------------------------

function onEvent(event) {
  const data = event.data;
  switch (event.type) {
    case "modelStatus": {
      const first = !store.models.length;
      store.models = data.models;
      store.emit("models", store.models);
      if (first) performance.mark("models-first-event");
      break;
    }
    case "activity": store.recent.push(data); store.emit("activity", data); break;
    case "inflight":
      if (data.op === "snapshot") store.inflight = new Map(data.requests.map((r) => [r.id, r]));
      else if (data.op === "upsert") store.inflight.set(data.request.id, data.request);
      else store.inflight.delete(data.id);
      store.emit("inflight", store.inflight);
      break;
    case "swap": case "pull": case "placement": case "dropped": store.emit(event.type, data); break;
    default: break;
  }
}

let eventsAbort = null;

async function connectEvents() {
  const badge = $("#connection");
  const controller = new AbortController();
  eventsAbort = controller;
  while (!controller.signal.aborted) {
    try {
      const response = await api("/api/events", { signal: controller.signal });
      if (!response.ok) throw new Error(await errorText(response));
      store.connected = true;
      badge.textContent = "live"; badge.classList.add("live");
      await readEvents(response, onEvent);
    } catch (error) {
      if (error.name === "AbortError") break;
      badge.textContent = `disconnected: ${error.message}`;
    }
    store.connected = false;
    badge.classList.remove("live");
    if (!controller.signal.aborted) await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  store.connected = false;
  badge.classList.remove("live");
}

// Leaving the page (another URL, a closed tab, the back-forward cache) closes every stream it
// holds at once: a browser may keep a page's fetches open while it sits in that cache, and
// each open stream holds an engine stream on the proxy. Coming back opens them again.
window.addEventListener("pagehide", () => {
  if (current && VIEWS[current.name]) VIEWS[current.name].leave();
  current = null;
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = null;
});
window.addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  render();
  connectEvents();
});

// Uptime and TTL tick between events; views redraw only their clocks.
setInterval(() => {
  for (const m of store.models) {
    if (m.uptime_s !== null && m.uptime_s !== undefined) m.uptime_s += 1;
    if (m.ttl_left_s !== null && m.ttl_left_s !== undefined && m.in_flight === 0) m.ttl_left_s = Math.max(0, m.ttl_left_s - 1);
  }
  store.emit("tick", store.models);
}, 1000);

// Tests and the curious can reach the state: window.llamaswap.store.
window.llamaswap = { store, navigate };

render();
connectEvents();
loadCapabilities();
