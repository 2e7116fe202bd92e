// #/playground/<tab>: try a model from the browser. Chat (streamed), Embeddings, Rerank,
// Images, Speech and Transcription (those three shown when a model's `capabilities` say it
// can), and Concurrency: N requests at once, with when each got its first byte and its end
// (a swap queue shows as the wait before the first byte).

import { $, $$, api, el, errorText, ms, rate, readEvents } from "./lib.js";
import { PALETTE, timelineChart } from "./charts.js";
import { navigate, store } from "./state.js";

// `when`: the capability a model needs for the tab (llama-swap's /v1/models flags);
// tabs without one are always there.
const TABS = [
  { id: "chat", label: "Chat", build: chatTab },
  { id: "embeddings", label: "Embeddings", build: embeddingsTab },
  { id: "rerank", label: "Rerank", build: rerankTab, prefer: (c) => c.reranker },
  { id: "images", label: "Images", build: imagesTab, when: (c) => c.image_generation },
  { id: "speech", label: "Speech", build: speechTab, when: (c) => c.audio_speech },
  { id: "transcription", label: "Transcription", build: transcriptionTab, when: (c) => c.audio_transcriptions },
  { id: "concurrency", label: "Concurrency", build: concurrencyTab },
];
const CONCURRENCY_MAX = 64;

let built = new Map();
let active = "chat";
let unsubscribe = [];

const capable = (tab, id) => !tab.when || tab.when(store.capabilities.get(id) || {});
const visible = (tab) => !tab.when || store.models.some((m) => capable(tab, m.id));

// The models a tab offers: those that can (capability tabs), preferred ones first.
function modelOptions(select, tab) {
  const chosen = select.value;
  let ids = store.models.filter((m) => !m.unlisted && capable(tab, m.id)).map((m) => m.id);
  if (tab.prefer) ids = [...ids.filter((id) => tab.prefer(store.capabilities.get(id) || {})), ...ids.filter((id) => !tab.prefer(store.capabilities.get(id) || {}))];
  select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
  if (ids.includes(chosen)) select.value = chosen;
}

function modelSelect(tab, id) {
  const select = el("select", { id, class: "pg-model-select", "data-tab": tab.id });
  modelOptions(select, tab);
  return el("label", {}, "Model ", select);
}

async function post(path, body) {
  const response = await api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

const raw = (value) => el("pre", { class: "json" }, JSON.stringify(value, null, 2));
const lines = (text) => text.split("\n").map((line) => line.trim()).filter(Boolean);

// ---- chat ---------------------------------------------------------------------------------

function chatTab(tab) {
  let conversation = [];
  const transcript = el("div", { id: "pg-transcript" });
  const input = el("textarea", { id: "pg-input", rows: 3, placeholder: "Say something…" });
  const send = el("button", { id: "pg-send", type: "submit", class: "primary" }, "Send");
  const status = el("p", { id: "pg-status", class: "status-line" });
  const maxTokens = el("input", { id: "pg-max-tokens", type: "number", value: 256, min: 1 });
  const message = (role, text) => {
    const node = el("div", { class: `message ${role}` }, el("span", { class: "who" }, role), el("span", { class: "text" }, text));
    transcript.append(node);
    return $(".text", node);
  };
  const form = el("form", { id: "pg-form", onsubmit: async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    const model = $("#pg-model").value;
    if (!text || !model) return;
    input.value = "";
    conversation.push({ role: "user", content: text });
    message("user", text);
    const answer = message("assistant", "");
    answer.parentElement.classList.add("streaming");
    send.disabled = true;
    status.textContent = "";
    let reply = "";
    try {
      const response = await post("/v1/chat/completions", { model, messages: conversation, stream: true,
        max_tokens: Number(maxTokens.value) || 256, stream_options: { include_usage: true } });
      let usage = null;
      await readEvents(response, (data) => {
        if (data.error) throw new Error(data.error.message || JSON.stringify(data.error));
        if (data.usage) usage = data.usage;
        const delta = data.choices && data.choices[0] && data.choices[0].delta;
        if (delta && delta.content) { reply += delta.content; answer.textContent = reply; }
        else if (delta && delta.reasoning_content) status.textContent = delta.reasoning_content.trim();
      });
      conversation.push({ role: "assistant", content: reply });
      status.textContent = "done";
      if (usage) status.title = `${usage.prompt_tokens} prompt tokens, ${usage.completion_tokens} generated`;
    } catch (error) {
      status.textContent = `error: ${error.message}`;
    } finally {
      answer.parentElement.classList.remove("streaming");
      answer.parentElement.classList.add("done");
      send.disabled = false;
    }
  } }, input, send);
  return [el("div", { class: "toolbar" }, modelSelect(tab, "pg-model"), el("label", {}, "Max tokens ", maxTokens),
    el("button", { id: "pg-clear", type: "button", onclick: () => { conversation = []; transcript.replaceChildren(); } }, "New chat")),
  transcript, form, status];
}

// ---- embeddings ---------------------------------------------------------------------------------

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

function embeddingsTab(tab) {
  const input = el("textarea", { id: "pg-embed-input", rows: 4, placeholder: "One text per line" }, "A llama is a camelid.\nAlpacas are camelids too.\nDocker runs containers.");
  const out = el("div", { id: "pg-embed-result" });
  const status = el("p", { class: "status-line", id: "pg-embed-status" });
  const run = async () => {
    const texts = lines(input.value);
    if (!texts.length) return;
    status.textContent = "…";
    try {
      const body = await (await post("/v1/embeddings", { model: $("#pg-embed-model").value, input: texts })).json();
      const vectors = (body.data || []).sort((a, b) => a.index - b.index).map((d) => d.embedding);
      if (!vectors.length || !Array.isArray(vectors[0])) { out.replaceChildren(raw(body)); status.textContent = "done"; return; }
      const rows = texts.map((text, i) => el("tr", {}, el("td", { class: "wrap" }, text), el("td", { class: "num" }, vectors[i] ? vectors[i].length : "–"),
        el("td", { class: "mono" }, vectors[i] ? vectors[i].slice(0, 6).map((v) => v.toFixed(3)).join(" ") + " …" : "")));
      const matrix = vectors.length > 1 ? el("table", { class: "similarity" },
        el("tr", {}, el("th", {}, "cosine"), ...texts.map((_, i) => el("th", {}, `#${i + 1}`))),
        ...vectors.map((a, i) => el("tr", {}, el("th", {}, `#${i + 1}`), ...vectors.map((b) => {
          const value = cosine(a, b);
          return el("td", { class: "num", style: `background:rgba(42,98,214,${Math.max(0, value) * 0.35})` }, value.toFixed(3));
        })))) : "";
      out.replaceChildren(el("table", {}, el("tr", {}, el("th", {}, "Input"), el("th", {}, "Dimensions"), el("th", {}, "First values")), ...rows),
        matrix ? el("h4", {}, "Similarity") : "", matrix);
      status.textContent = `done · ${body.usage ? `${body.usage.prompt_tokens ?? body.usage.total_tokens} tokens` : ""}`;
    } catch (error) { status.textContent = `error: ${error.message}`; }
  };
  return [el("div", { class: "toolbar" }, modelSelect(tab, "pg-embed-model"), el("button", { class: "primary", id: "pg-embed-run", type: "button", onclick: run }, "Embed")),
    input, status, out];
}

// ---- rerank -------------------------------------------------------------------------------------

function rerankTab(tab) {
  const query = el("input", { id: "pg-rerank-query", type: "text", value: "Which animal is a camelid?" });
  const docs = el("textarea", { id: "pg-rerank-docs", rows: 4, placeholder: "One document per line" }, "The llama lives in the Andes.\nDocker images are built in layers.\nThe alpaca is a domesticated camelid.");
  const out = el("div", { id: "pg-rerank-result" });
  const status = el("p", { class: "status-line", id: "pg-rerank-status" });
  const run = async () => {
    const documents = lines(docs.value);
    status.textContent = "…";
    try {
      const body = await (await post("/v1/rerank", { model: $("#pg-rerank-model").value, query: query.value, documents })).json();
      const results = body.results || body.data;
      if (!Array.isArray(results)) { out.replaceChildren(raw(body)); status.textContent = "done (not a rerank answer)"; return; }
      const sorted = [...results].sort((a, b) => b.relevance_score - a.relevance_score);
      const top = Math.max(...sorted.map((r) => Math.abs(r.relevance_score)), 1e-9);
      out.replaceChildren(el("table", {}, el("tr", {}, el("th", {}, "Rank"), el("th", {}, "Score"), el("th", {}, "Document")),
        ...sorted.map((r, i) => el("tr", {}, el("td", { class: "num" }, i + 1),
          el("td", { class: "num" }, el("span", { class: "meter inline" }, el("span", { style: `width:${(Math.abs(r.relevance_score) / top) * 100}%` })), ` ${Number(r.relevance_score).toFixed(3)}`),
          el("td", { class: "wrap" }, documents[r.index] ?? (r.document && r.document.text) ?? `#${r.index}`)))));
      status.textContent = "done";
    } catch (error) { status.textContent = `error: ${error.message}`; }
  };
  return [el("div", { class: "toolbar" }, modelSelect(tab, "pg-rerank-model"), el("button", { class: "primary", id: "pg-rerank-run", type: "button", onclick: run }, "Rerank")),
    el("label", { class: "block" }, "Query ", query), docs, status, out];
}

// ---- images ---------------------------------------------------------------------------------------

function imagesTab(tab) {
  const prompt = el("textarea", { id: "pg-image-prompt", rows: 2 }, "A llama on a mountain, watercolor");
  const size = el("select", { id: "pg-image-size" }, ...["256x256", "512x512", "1024x1024"].map((s) => el("option", {}, s)));
  const out = el("div", { id: "pg-image-result", class: "images" });
  const status = el("p", { class: "status-line", id: "pg-image-status" });
  const run = async () => {
    status.textContent = "generating…";
    const started = performance.now();
    try {
      const body = await (await post("/v1/images/generations", { model: $("#pg-image-model").value, prompt: prompt.value,
        size: size.value, n: 1, response_format: "b64_json" })).json();
      const images = (body.data || []).map((d) => d.b64_json ? `data:image/png;base64,${d.b64_json}` : d.url).filter(Boolean);
      out.replaceChildren(...(images.length ? images.map((src) => el("img", { src, alt: prompt.value })) : [raw(body)]));
      status.textContent = `done in ${ms(performance.now() - started)}`;
    } catch (error) { status.textContent = `error: ${error.message}`; }
  };
  return [el("div", { class: "toolbar" }, modelSelect(tab, "pg-image-model"), el("label", {}, "Size ", size),
    el("button", { class: "primary", id: "pg-image-run", type: "button", onclick: run }, "Generate")), prompt, status, out];
}

// ---- speech and transcription ------------------------------------------------------------------------

function speechTab(tab) {
  const text = el("textarea", { id: "pg-speech-input", rows: 3 }, "Hello from llamaswap-docker.");
  const voice = el("input", { id: "pg-speech-voice", type: "text", value: "alloy", size: 10 });
  const out = el("div", { id: "pg-speech-result" });
  const status = el("p", { class: "status-line", id: "pg-speech-status" });
  const run = async () => {
    status.textContent = "speaking…";
    try {
      const response = await post("/v1/audio/speech", { model: $("#pg-speech-model").value, input: text.value, voice: voice.value });
      const type = response.headers.get("content-type") || "";
      if (type.startsWith("audio/") || type === "application/octet-stream") {
        const blob = await response.blob();
        out.replaceChildren(el("audio", { controls: true, src: URL.createObjectURL(blob) }), el("span", { class: "muted" }, ` ${blob.size} bytes of ${type}`));
      } else {
        out.replaceChildren(el("pre", { class: "json" }, await response.text()));
      }
      status.textContent = "done";
    } catch (error) { status.textContent = `error: ${error.message}`; }
  };
  return [el("div", { class: "toolbar" }, modelSelect(tab, "pg-speech-model"), el("label", {}, "Voice ", voice),
    el("button", { class: "primary", id: "pg-speech-run", type: "button", onclick: run }, "Speak")), text, status, out];
}

function transcriptionTab(tab) {
  const file = el("input", { id: "pg-transcribe-file", type: "file", accept: "audio/*" });
  const out = el("div", { id: "pg-transcribe-result" });
  const status = el("p", { class: "status-line", id: "pg-transcribe-status" });
  const run = async () => {
    if (!file.files.length) { status.textContent = "pick an audio file first"; return; }
    status.textContent = "transcribing…";
    const form = new FormData();
    form.append("model", $("#pg-transcribe-model").value);
    form.append("file", file.files[0]);
    try {
      const response = await api("/v1/audio/transcriptions", { method: "POST", body: form });
      if (!response.ok) throw new Error(await errorText(response));
      const body = await response.json().catch(() => null);
      out.replaceChildren(body && typeof body.text === "string" ? el("blockquote", {}, body.text) : raw(body));
      status.textContent = "done";
    } catch (error) { status.textContent = `error: ${error.message}`; }
  };
  return [el("div", { class: "toolbar" }, modelSelect(tab, "pg-transcribe-model"), file,
    el("button", { class: "primary", id: "pg-transcribe-run", type: "button", onclick: run }, "Transcribe")), status, out];
}

// ---- concurrency --------------------------------------------------------------------------------------

function concurrencyTab(tab) {
  const count = el("input", { id: "pg-conc-count", type: "number", value: 4, min: 1, max: CONCURRENCY_MAX });
  const maxTokens = el("input", { id: "pg-conc-max-tokens", type: "number", value: 32, min: 1 });
  const prompt = el("input", { id: "pg-conc-prompt", type: "text", value: "Count from one to ten.", size: 40 });
  const stream = el("input", { id: "pg-conc-stream", type: "checkbox", checked: true });
  const status = el("p", { class: "status-line", id: "pg-conc-status" });
  const chart = el("div", { id: "pg-conc-chart", class: "chart-box" });
  const table = el("table", { id: "pg-conc-table" }, el("thead", {}, el("tr", {}, ...["#", "Status", "First byte", "Total", "Tokens", "tok/s", "Error"].map((h) => el("th", {}, h)))), el("tbody"));
  let controller = null;
  const stop = el("button", { type: "button", id: "pg-conc-stop", disabled: true, onclick: () => controller && controller.abort() }, "Stop");

  async function one(i, model, t0, signal, results, redraw) {
    const result = { i, status: null, first: null, end: null, tokens: null, error: null };
    results[i] = result;
    try {
      const response = await api("/v1/chat/completions", { method: "POST", signal, headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model, stream: stream.checked, max_tokens: Number(maxTokens.value) || 32,
          messages: [{ role: "user", content: prompt.value }], ...(stream.checked ? { stream_options: { include_usage: true } } : {}) }) });
      result.status = response.status;
      if (!response.ok) { result.error = await errorText(response); return; }
      if (stream.checked) {
        await readEvents(response, (data) => {
          if (result.first === null) { result.first = performance.now() - t0; redraw(); }
          if (data.usage) result.tokens = data.usage.completion_tokens;
        });
      } else {
        result.first = performance.now() - t0;
        const body = await response.json();
        result.tokens = body.usage ? body.usage.completion_tokens : null;
      }
    } catch (error) {
      result.error = error.name === "AbortError" ? "stopped" : error.message;
    } finally {
      result.end = performance.now() - t0;
      redraw();
    }
  }

  const run = async () => {
    const n = Math.min(CONCURRENCY_MAX, Math.max(1, Number(count.value) || 1));
    const model = $("#pg-conc-model").value;
    controller = new AbortController();
    stop.disabled = false;
    run.button.disabled = true;
    const results = [];
    const t0 = performance.now();
    const redraw = () => {
      const done = results.filter((r) => r && r.end !== null);
      table.tBodies[0].replaceChildren(...results.filter(Boolean).map((r) => el("tr", { "data-status": r.status ?? "" },
        el("td", { class: "num" }, r.i + 1), el("td", { class: "num" }, r.status ?? "…"),
        el("td", { class: "num" }, r.first === null ? "…" : ms(r.first)), el("td", { class: "num" }, r.end === null ? "…" : ms(r.end)),
        el("td", { class: "num" }, r.tokens ?? "–"),
        el("td", { class: "num" }, r.tokens && r.end !== null && r.first !== null && r.end > r.first ? rate(r.tokens / ((r.end - r.first) / 1000)) : "–"),
        el("td", { class: "wrap" }, r.error || ""))));
      const now = performance.now() - t0;
      timelineChart(chart, { lanes: results.filter(Boolean).map((r) => `#${r.i + 1}`), start: 0, end: Math.max(now, 1),
        xFormat: (t) => ms(t), segments: results.filter(Boolean).flatMap((r) => [
          { lane: `#${r.i + 1}`, start: 0, end: r.first ?? r.end ?? now, color: "#c9c9d1", title: `#${r.i + 1} waiting ${ms(r.first ?? now)}` },
          ...(r.first !== null ? [{ lane: `#${r.i + 1}`, start: r.first, end: r.end ?? now, color: r.error ? PALETTE[3] : PALETTE[0],
            title: `#${r.i + 1} answering ${ms((r.end ?? now) - r.first)}` }] : [])]) });
      status.textContent = `${done.length} of ${n} done` + (done.length === n
        ? ` in ${ms(Math.max(...done.map((r) => r.end)))} · first byte median ${ms(median(done.map((r) => r.first ?? r.end)))}` : "…");
    };
    await Promise.all(Array.from({ length: n }, (_, i) => one(i, model, t0, controller.signal, results, redraw)));
    redraw();
    stop.disabled = true;
    run.button.disabled = false;
    status.dataset.done = "1";
  };
  run.button = el("button", { class: "primary", id: "pg-conc-run", type: "button", onclick: () => { status.dataset.done = ""; run(); } }, "Fire");
  return [el("div", { class: "toolbar" }, modelSelect(tab, "pg-conc-model"), el("label", {}, "Requests ", count),
    el("label", {}, "Max tokens ", maxTokens), el("label", {}, stream, " stream"), run.button, stop),
  el("label", { class: "block" }, "Prompt ", prompt), status, chart, table,
  el("p", { class: "muted" }, "Requests that had to wait for a load or a swap show a long grey bar; the Activity page has each one's wait.")];
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
}

// ---- the page ---------------------------------------------------------------------------------------

function renderTabs() {
  $("#pg-tabs").replaceChildren(...TABS.filter(visible).map((tab) =>
    el("a", { href: `#/playground/${tab.id}`, class: `tab${tab.id === active ? " active" : ""}`, id: `pg-tab-${tab.id}` }, tab.label)));
}

function refreshModels() {
  renderTabs();
  for (const tab of TABS) {
    const panel = built.get(tab.id);
    if (panel) $$("select.pg-model-select", panel).forEach((select) => modelOptions(select, tab));
  }
}

function show(route) {
  active = route.parts[1] || "chat";
  const tab = TABS.find((t) => t.id === active);
  if (!tab) { navigate("/playground/chat", { replace: true }); return; }
  renderTabs();
  for (const panel of built.values()) panel.hidden = true;
  if (!visible(tab)) {
    const note = built.get("missing") || el("div", { id: "pg-missing" });
    built.set("missing", note);
    note.replaceChildren(el("p", { class: "muted" }, `No model says it can do this: set its capabilities in the config (${tab.label}).`));
    note.hidden = false;
    $("#pg-body").append(note);
    return;
  }
  if (!built.has(tab.id)) {
    const panel = el("div", { id: `pg-panel-${tab.id}`, class: "pg-panel" }, ...tab.build(tab));
    built.set(tab.id, panel);
    $("#pg-body").append(panel);
  }
  built.get(tab.id).hidden = false;
}

export function enter(route) {
  unsubscribe = [store.on("models", refreshModels), store.on("capabilities", () => { refreshModels(); show({ parts: ["playground", active] }); })];
  show(route);
}

export const update = show;

export function leave() {
  unsubscribe.forEach((stop) => stop());
  unsubscribe = [];
}
