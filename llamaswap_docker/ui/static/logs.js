// #/logs (the proxy's own log) and #/logs/<model> (its container's output, from the engine):
// a bounded ring of lines, follow or pause, filter.

import { $, el } from "./lib.js";
import { navigate, store } from "./state.js";
import { LogPane } from "./logpane.js";

let pane = null;
let source = "";
let container = null;
let unsubscribe = null;

function sourcePicker() {
  const select = el("select", { id: "log-source", onchange: () =>
    navigate(select.value ? `/logs/${encodeURIComponent(select.value)}` : "/logs") },
  el("option", { value: "" }, "proxy"),
  ...store.models.map((m) => el("option", { value: m.id }, `model: ${m.id}`)));
  if (source && !store.model(source)) select.append(el("option", { value: source }, `model: ${source}`));
  select.value = source;
  return el("label", {}, "Source ", select);
}

function follow(route) {
  source = route.parts.length > 1 ? decodeURIComponent(route.parts.slice(1).join("/")) : "";
  const m = source ? store.model(source) : null;
  container = m ? m.container_name : null;
  pane.extra.replaceChildren(sourcePicker());
  pane.open(source ? `/logs/stream/${encodeURIComponent(source)}?tail=1000` : "/logs/stream?tail=1000");
}

// A model's log follows the model: a new container (a load, a restart) is followed in turn.
function onModels() {
  if (!$("#log-source") || $("#log-source").options.length !== store.models.length + 1) {
    pane.extra.replaceChildren(sourcePicker());
  }
  const m = source ? store.model(source) : null;
  if (m && m.container_name && m.container_name !== container) {
    container = m.container_name;
    pane.open(`/logs/stream/${encodeURIComponent(source)}?tail=1000`);
  }
}

export function enter(route) {
  if (!pane) pane = new LogPane($("#logs-pane"));
  // The picker lists the models as they come and go (a config reload).
  unsubscribe = store.on("models", onModels);
  follow(route);
}

export function update(route) {
  follow(route);
}

export function leave() {
  if (pane) pane.close();
  if (unsubscribe) unsubscribe();
}
