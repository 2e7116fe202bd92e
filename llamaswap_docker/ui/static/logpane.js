// A live log in the page: the newest lines in a bounded ring (older ones drop out), follow or
// pause, and a filter. Used by the Logs page and by each model's page.

import { el, errorText, headers, readLines, Ring, throttle } from "./lib.js";

export const LOG_LINES = 5000;
// Milliseconds before following a broken stream again.
const RETRY_MS = 2000;

export class LogPane {
  constructor(root, { limit = LOG_LINES, height = null } = {}) {
    this.root = root;
    this.ring = new Ring(limit);
    this.following = true;
    this.unseen = 0;
    this.controller = null;
    this.filter = "";
    this.view = el("pre", { class: "log", id: `${root.id}-view`, style: height ? `height:${height}` : null });
    this.toggle = el("button", { type: "button", class: "log-follow", onclick: () => this.setFollowing(!this.following) }, "Pause");
    this.filterInput = el("input", { type: "search", class: "log-filter", placeholder: "filter lines…",
      oninput: () => { this.filter = this.filterInput.value.toLowerCase(); this.render(); } });
    this.counter = el("span", { class: "muted log-count" });
    this.extra = el("span", { class: "log-extra" });
    root.replaceChildren(el("div", { class: "toolbar" }, this.extra, this.filterInput, this.toggle,
      el("button", { type: "button", onclick: () => { this.ring.clear(); this.render(); } }, "Clear"),
      el("span", { class: "spacer" }), this.counter), this.view);
    this.schedule = throttle(() => this.render(), 200);
    // Scrolling up to read pauses the view; back at the bottom, it follows again.
    this.view.addEventListener("scroll", () => {
      const atBottom = this.view.scrollTop + this.view.clientHeight >= this.view.scrollHeight - 8;
      if (!atBottom && this.following && this.view.dataset.autoscroll !== "1") this.setFollowing(false);
      this.view.dataset.autoscroll = "";
    });
  }

  setFollowing(on) {
    this.following = on;
    this.toggle.textContent = on ? "Pause" : "Follow";
    this.root.classList.toggle("paused", !on);
    if (on) { this.unseen = 0; this.render(); }
    else this.renderCounter();
  }

  add(lines) {
    this.ring.push(...lines);
    if (!this.following) this.unseen += lines.length;
    this.schedule();
  }

  renderCounter() {
    const dropped = this.ring.dropped ? ` · ${this.ring.dropped} older dropped` : "";
    const paused = !this.following && this.unseen ? ` · paused, ${this.unseen} new` : "";
    this.counter.textContent = `${this.ring.length} lines${dropped}${paused}`;
    this.root.dataset.lines = this.ring.length;
  }

  render() {
    this.renderCounter();
    if (!this.following) return;
    const lines = this.filter ? this.ring.items.filter((line) => line.toLowerCase().includes(this.filter)) : this.ring.items;
    this.view.textContent = lines.join("\n");
    this.view.dataset.autoscroll = "1";
    this.view.scrollTop = this.view.scrollHeight;
  }

  // Follow a text stream (GET /logs/stream or /logs/stream/<model>) until close(); a stream
  // that broke (not one the server ended) is followed again, without its history.
  async open(path) {
    this.close();
    this.ring.clear();
    this.unseen = 0;
    this.render();
    const controller = new AbortController();
    this.controller = controller;
    let url = path;
    while (!controller.signal.aborted) {
      try {
        const response = await fetch(url, { headers: headers(), signal: controller.signal });
        if (!response.ok) { this.add([await errorText(response)]); return; }
        await readLines(response, (lines) => this.add(lines), controller.signal);
        return;
      } catch (error) {
        if (error.name === "AbortError") return;
        this.add([`[log stream broke: ${error.message}; following again]`]);
        url = path.replace(/tail=\d+/, "tail=0");
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    }
  }

  close() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }
}
