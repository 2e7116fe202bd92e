// llamaswap-docker web UI: plain JavaScript, served by the proxy, nothing fetched elsewhere.
// Live state comes from GET /api/events (read with fetch, so an API key can be sent).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { models: [], activity: new Map(), inflight: new Map(), logAbort: null };

// ---- API access (with the key, when the proxy asks for one) ----------------------------

function headers(extra = {}) {
  const key = localStorage.getItem("llamaswap-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function askForKey() {
  const dialog = $("#key-dialog");
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  localStorage.setItem("llamaswap-key", $("#key-input").value);
}

async function api(path, options = {}) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    if (response.status !== 401 || attempt === 1) return response;
    await askForKey();
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

// ---- formatting ------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 60) return `${Math.round(value)} s`;
  if (value < 3600) return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
  return `${Math.floor(value / 3600)} h ${Math.round((value % 3600) / 60)} min`;
}

const count = (value) => (value === null || value === undefined || value < 0 ? "–" : String(value));
const rate = (value) => (value === null || value === undefined || value < 0 ? "–" : value.toFixed(1));
const ms = (value) => (value < 1000 ? `${value} ms` : `${(value / 1000).toFixed(2)} s`);

// ---- tabs --------------------------------------------------------------------------------

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    document.querySelectorAll(".panel").forEach((p) =>
      p.classList.toggle("active", p.id === `panel-${tab.dataset.panel}`));
    if (tab.dataset.panel === "logs") followLogs();
  });
}

// ---- models --------------------------------------------------------------------------------

function renderModels() {
  const body = $("#models-table tbody");
  body.replaceChildren();
  for (const model of state.models) {
    const busy = ["starting", "stopping"].includes(model.state);
    const up = ["ready", "asleep", "starting"].includes(model.state);
    const row = el("tr", { "data-model": model.id },
      el("td", {}, el("strong", {}, model.id), model.name ? el("div", { class: "muted" }, model.name) : ""),
      el("td", {}, el("span", { class: `state ${model.state}` }, model.state)),
      el("td", {}, model.container_name || "–"),
      el("td", {}, model.image),
      el("td", { class: "num uptime" }, seconds(model.uptime_s)),
      el("td", { class: "num ttl-left" }, model.ttl ? seconds(model.ttl_left_s) : "never"),
      el("td", { class: "num" }, model.in_flight),
      el("td", { class: "num" }, model.waiting),
      el("td", {},
        el("button", { class: "load primary", "data-model": model.id, disabled: busy || model.state === "ready" ? "" : null,
                       onclick: () => loadModel(model.id) }, "Load"), " ",
        el("button", { class: "unload", "data-model": model.id, disabled: !up || busy ? "" : null,
                       onclick: () => unloadModel(model.id) }, "Unload")));
    body.append(row);
    if (model.failure) {
      body.append(el("tr", { class: "failure-row" },
        el("td", { colspan: 9, class: "wrap" }, el("div", { class: "failure" }, model.failure))));
    }
  }
  const select = $("#pg-model");
  const chosen = select.value;
  select.replaceChildren(...state.models.filter((m) => !m.unlisted).map((m) => el("option", { value: m.id }, m.id)));
  if (chosen) select.value = chosen;
  const source = $("#log-source");
  const logChoice = source.value;
  source.replaceChildren(el("option", { value: "" }, "proxy"),
    ...state.models.map((m) => el("option", { value: m.id }, `model: ${m.id}`)));
  source.value = logChoice;
}

async function loadModel(id) {
  $("#swap-status").textContent = `loading ${id}…`;
  const response = await api(`/api/models/load/${encodeURIComponent(id)}`, { method: "POST" });
  $("#swap-status").textContent = response.ok ? `${id} is ready` : `loading ${id} failed: ${await errorText(response)}`;
}

async function unloadModel(id) {
  const response = await api(`/api/models/unload/${encodeURIComponent(id)}`, { method: "POST" });
  $("#swap-status").textContent = response.ok ? `${id} unloaded` : `unload failed: ${await errorText(response)}`;
}

// ---- in flight ------------------------------------------------------------------------------

function renderInflight() {
  const body = $("#inflight-table tbody");
  body.replaceChildren(...[...state.inflight.values()].map((r) => el("tr", { "data-request": r.id },
    el("td", {}, r.id), el("td", {}, r.model), el("td", {}, r.path), el("td", {}, r.client),
    el("td", { class: "num" }, seconds(r.elapsed_s)), el("td", { class: "num" }, r.bytes),
    el("td", {}, el("button", { class: "cancel", onclick: () => cancelRequest(r.id) }, "Cancel")))));
  $("#inflight-empty").hidden = state.inflight.size > 0;
}

async function cancelRequest(id) {
  await api(`/api/inflight/${encodeURIComponent(id)}/cancel`, { method: "POST" });
}

// ---- activity -------------------------------------------------------------------------------

function activityRow(row) {
  const t = row.tokens;
  return el("tr", { "data-id": row.id },
    el("td", { class: "num" }, row.id),
    el("td", {}, new Date(row.timestamp).toLocaleTimeString()),
    el("td", {}, row.model), el("td", {}, row.req_path),
    el("td", { class: "num" }, row.resp_status_code),
    el("td", { class: "num" }, ms(row.wait_ms)), el("td", { class: "num" }, ms(row.duration_ms)),
    el("td", { class: "num" }, count(t.input_tokens)), el("td", { class: "num" }, count(t.output_tokens)),
    el("td", { class: "num" }, count(t.cache_tokens)),
    el("td", { class: "num prompt-rate" }, rate(t.prompt_per_second)),
    el("td", { class: "num gen-rate" }, rate(t.tokens_per_second)),
    el("td", {}, row.has_capture ? el("a", { href: `/api/captures/${row.id}`, target: "_blank" }, "capture") : ""));
}

function addActivity(row) {
  if (state.activity.has(row.id)) return;
  state.activity.set(row.id, row);
  $("#activity-table tbody").prepend(activityRow(row));
}

async function loadActivity() {
  const response = await api("/api/metrics/activity?limit=200");
  if (!response.ok) return;
  const page = await response.json();
  for (const row of page.activity.reverse()) addActivity(row);
}

// ---- logs -----------------------------------------------------------------------------------

async function followLogs() {
  if (state.logAbort) state.logAbort.abort();
  const controller = new AbortController();
  state.logAbort = controller;
  const view = $("#log-view");
  view.textContent = "";
  const model = $("#log-source").value;
  const path = model ? `/logs/stream/${encodeURIComponent(model)}` : "/logs/stream?tail=500";
  try {
    const response = await fetch(path, { headers: headers(), signal: controller.signal });
    if (!response.ok) { view.textContent = await errorText(response); return; }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atBottom = view.scrollTop + view.clientHeight >= view.scrollHeight - 20;
      view.textContent += decoder.decode(value, { stream: true });
      if (atBottom) view.scrollTop = view.scrollHeight;
    }
  } catch (error) {
    if (error.name !== "AbortError") view.textContent += `\n[log stream ended: ${error}]`;
  }
}
$("#log-source").addEventListener("change", followLogs);

// ---- playground -----------------------------------------------------------------------------

let conversation = [];

function message(role, text) {
  const node = el("div", { class: `message ${role}` }, el("span", { class: "who" }, role), el("span", { class: "text" }, text));
  $("#pg-transcript").append(node);
  return $(".text", node);
}

$("#pg-clear").addEventListener("click", () => { conversation = []; $("#pg-transcript").replaceChildren(); });

$("#pg-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("#pg-input").value.trim();
  const model = $("#pg-model").value;
  if (!text || !model) return;
  $("#pg-input").value = "";
  conversation.push({ role: "user", content: text });
  message("user", text);
  const answer = message("assistant", "");
  answer.parentElement.classList.add("streaming");
  $("#pg-send").disabled = true;
  $("#pg-status").textContent = "";
  let reply = "";
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages: conversation, stream: true,
        max_tokens: Number($("#pg-max-tokens").value) || 256, stream_options: { include_usage: true } }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (data) => {
      if (data.error) throw new Error(data.error.message || JSON.stringify(data.error));
      const delta = data.choices && data.choices[0] && data.choices[0].delta;
      if (delta && delta.content) { reply += delta.content; answer.textContent = reply; }
      else if (delta && delta.reasoning_content) $("#pg-status").textContent = delta.reasoning_content.trim();
    });
    conversation.push({ role: "assistant", content: reply });
    $("#pg-status").textContent = "done";
  } catch (error) {
    $("#pg-status").textContent = `error: ${error.message}`;
  } finally {
    answer.parentElement.classList.remove("streaming");
    answer.parentElement.classList.add("done");
    $("#pg-send").disabled = false;
  }
});

// ---- SSE over fetch ------------------------------------------------------------------------

async function readEvents(response, onData) {
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

function onEvent(event) {
  const data = event.data;
  switch (event.type) {
    case "modelStatus": state.models = data.models; renderModels(); break;
    case "activity": addActivity(data); break;
    case "inflight":
      if (data.op === "snapshot") { state.inflight = new Map(data.requests.map((r) => [r.id, r])); }
      else if (data.op === "upsert") state.inflight.set(data.request.id, data.request);
      else state.inflight.delete(data.id);
      renderInflight();
      break;
    case "swap":
      $("#swap-status").textContent = data.phase === "start"
        ? `${data.wake ? "waking" : "starting"} ${data.model}${data.evicted.length ? ` (evicting ${data.evicted.join(", ")})` : ""}…`
        : data.ok ? `${data.model} ready in ${data.seconds.toFixed(1)} s` : `${data.model} failed: ${data.error}`;
      break;
    case "pull":
      $("#swap-status").textContent = `pulling ${data.image}: ${data.fraction === null ? data.status : Math.round(data.fraction * 100) + " %"}`;
      break;
  }
}

async function connectEvents() {
  const badge = $("#connection");
  for (;;) {
    try {
      const response = await api("/api/events");
      if (!response.ok) throw new Error(await errorText(response));
      badge.textContent = "live"; badge.classList.add("live");
      await readEvents(response, onEvent);
    } catch (error) {
      badge.textContent = `disconnected: ${error.message}`;
    }
    badge.classList.remove("live");
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// Uptime and TTL tick between events.
setInterval(() => {
  for (const model of state.models) {
    if (model.uptime_s !== null) model.uptime_s += 1;
    if (model.ttl_left_s !== null && model.in_flight === 0) model.ttl_left_s = Math.max(0, model.ttl_left_s - 1);
    // Only the clocks change: the buttons stay where they are.
    const row = document.querySelector(`#models-table tr[data-model="${CSS.escape(model.id)}"]`);
    if (!row) continue;
    $(".uptime", row).textContent = seconds(model.uptime_s);
    if (model.ttl) $(".ttl-left", row).textContent = seconds(model.ttl_left_s);
  }
}, 1000);

loadActivity();
connectEvents();
