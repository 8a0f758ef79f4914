// Views: the DOM of the runs list, the connection pill and one run's page.
//
// Views read the store and draw; user actions call the store. They hold only
// what drawing needs (the list's <li> nodes, how much of the timeline is shown).

import { ChartBoard } from "./charts.js";

export const $ = (selector, root = document) => root.querySelector(selector);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// ------------------------------------------------------------------ time

function parseTime(ts) {
  if (!ts) return NaN;
  return Date.parse(ts);
}

function relativeTime(ts, now = Date.now()) {
  const t = parseTime(ts);
  if (!Number.isFinite(t)) return "never";
  const s = Math.round((now - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

function absoluteTime(ts) {
  const t = parseTime(ts);
  return Number.isFinite(t) ? new Date(t).toLocaleString() : "";
}

// ------------------------------------------------------------------ notice and connection

export function showNotice(text) {
  const notice = $("#notice");
  notice.textContent = text;
  notice.hidden = !text;
}

const CONNECTION_LABELS = {
  connected: "connected",
  connecting: "connecting…",
  reconnecting: "reconnecting…",
  offline: "offline — retrying",
  ended: "replay finished",
};

export function renderConnection(state) {
  const node = $("#conn");
  if (node.dataset.state === state) return;
  node.dataset.state = state;
  $(".conn-label", node).textContent = CONNECTION_LABELS[state];
}

// ------------------------------------------------------------------ runs list

export class ListView {
  constructor(store) {
    this.store = store;
    this.items = new Map(); // id -> <li>
  }

  render() {
    const { runs, authProblem } = this.store.list;
    const list = $("#runs");
    const filter = $("#runs-filter").value.trim().toLowerCase();
    const ordered = [...runs.values()].sort((a, b) => {
      const ta = parseTime(a.lastTimestamp) || 0, tb = parseTime(b.lastTimestamp) || 0;
      return tb - ta || a.id.localeCompare(b.id);
    });
    const current = this.store.route.id;
    const wanted = [];
    for (const run of ordered) {
      if (filter && !run.id.toLowerCase().includes(filter)) continue;
      let li = this.items.get(run.id);
      if (!li) {
        li = el("li", { class: "run-item" });
        const link = el("a", { class: "run-link", href: `#/runs/${encodeURIComponent(run.id)}` });
        link.append(
          el("span", { class: "run-id" }),
          el("span", { class: "badge" }),
          el("span", { class: "run-sub" }),
          el("span", { class: "run-error" }),
        );
        li.append(link);
        this.items.set(run.id, li);
      }
      const link = li.firstChild;
      li.dataset.id = run.id;
      li.dataset.status = run.status;
      link.setAttribute("aria-current", run.id === current ? "page" : "false");
      $(".run-id", link).textContent = run.id;
      const badge = $(".badge", link);
      badge.textContent = run.status;
      badge.className = `badge status-${run.status}`;
      const sub = $(".run-sub", link);
      const count = `${(run.messages || 0).toLocaleString()} message${run.messages === 1 ? "" : "s"}`;
      sub.textContent = `${count} · updated ${relativeTime(run.lastTimestamp)}`;
      sub.title = absoluteTime(run.lastTimestamp);
      const err = $(".run-error", link);
      err.textContent = run.status === "failed" && run.error ? run.error : "";
      err.title = err.textContent;
      wanted.push(li);
    }
    for (const [id, li] of this.items) {
      if (!runs.has(id)) { li.remove(); this.items.delete(id); }
    }
    // Reorder in place so a focused link keeps its focus.
    wanted.forEach((li, i) => {
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    });
    while (list.children.length > wanted.length) list.lastChild.remove();
    $("#runs-count").textContent = runs.size ? `(${runs.size})` : "";
    const byStatus = {};
    for (const run of runs.values()) byStatus[run.status] = (byStatus[run.status] || 0) + 1;
    $("#welcome-title").textContent = runs.size ? "Pick a run" : "Waiting for runs";
    $("#summary").textContent = runs.size
      ? `${runs.size} run${runs.size === 1 ? "" : "s"}: ` + ["running", "completed", "failed", "unknown"]
        .filter((status) => byStatus[status]).map((status) => `${byStatus[status]} ${status}`).join(", ")
      : "";
    $("#runs-empty").hidden = runs.size > 0 || authProblem;
  }
}

// ------------------------------------------------------------------ one run

export class RunView {
  constructor(store, feed) {
    this.store = store;
    this.feed = feed;
    this.board = new ChartBoard($("#charts"));
    this.shown = null; // the model the board is bound to
    this.renderedTimeline = { model: null, resets: -1, count: 0, dropped: 0 };
    $("#run-title").textContent = feed.id;
    $("#run").hidden = false;
    $("#welcome").hidden = true;
    this.renderMeta();
  }

  destroy() {
    this.board.clear();
  }

  /** Draw what changed; returns true while a chart redraw is still owed. */
  flush() {
    const feed = this.feed;
    if (this.shown !== feed.model) {
      this.shown = feed.model;
      this.board.bind(feed.model);
      this.renderedTimeline.resets = -1;
    }
    const owed = window.Plotly ? this.board.flush() : false; // charts wait for plotly
    if (feed.model.metaDirty || feed.live.metaDirty) this.renderMeta();
    return owed;
  }

  renderMeta() {
    const feed = this.feed;
    const live = feed.live;
    const model = feed.model;
    model.metaDirty = false;
    live.metaDirty = false;
    const listed = this.store.list.runs.get(feed.id);
    const status = live.messages ? live.status : (listed ? listed.status : "unknown");
    const badge = $("#run-status");
    badge.textContent = status;
    badge.className = `badge status-${status}`;
    const parts = [`${model.messages.toLocaleString()} messages`];
    if (model.lastTimestamp) parts.push(`last update ${absoluteTime(model.lastTimestamp)}`);
    const p = model.progress;
    // Epochs are numbered from 0 (Lightning's current_epoch); progress reads better as a count.
    if (p.epoch != null) {
      parts.push(p.totalEpochs != null ? `epoch ${p.epoch + 1}/${p.totalEpochs}` : `epoch ${p.epoch}`);
    }
    if (p.round != null) parts.push(`round ${p.round}${p.totalRounds != null ? `/${p.totalRounds}` : ""}`);
    if (model.mode) parts.push(model.mode.is_federated ? "federated" : "centralized");
    $("#run-meta").textContent = parts.join(" · ");

    // Replay controls.
    const finished = status === "completed" || status === "failed";
    const replay = feed.replay;
    $("#replay-play").disabled = !finished && !replay;
    $("#replay-play").title = finished ? "" : "replay is for finished runs";
    $("#replay-play").textContent = replay ? "Restart" : "Replay";
    const over = replay && (replay.state === "finished" || replay.state === "failed");
    $("#replay-pause").disabled = !replay || over;
    $("#replay-pause").textContent = replay && replay.paused ? "Resume" : "Pause";
    $("#replay-pause").setAttribute("aria-pressed", replay && replay.paused ? "true" : "false");
    $("#replay-stop").disabled = !replay;
    $("#replay-stop").textContent = over ? "Back to live" : "Stop";
    const replayState = $("#replay-state");
    replayState.textContent = replay
      ? `replay ${replay.state}${replay.problem ? `: ${replay.problem}` : ""}${replay.paused && replay.buffer.length ? ` (${replay.buffer.length} buffered)` : ""} · ${replay.speed === 0 ? "max" : `${replay.speed}×`}`
      : "";
    $("#run").dataset.replay = replay ? replay.state : "off";

    // The failure, up top.
    const err = model.lastError || (model === live ? null : live.lastError);
    const banner = $("#run-error");
    if (status === "failed" || err) {
      banner.hidden = false;
      $("#run-error-text").textContent = err
        ? `${err.type ? `${err.type}: ` : ""}${err.error}`
        : (listed && listed.error) || "the run failed (no error message recorded)";
      const tb = $("#run-error-traceback");
      tb.hidden = !(err && err.traceback);
      $("pre", tb).textContent = err ? err.traceback : "";
    } else {
      banner.hidden = true;
    }

    $("#no-charts").hidden = model.charts.size > 0;
    $("#no-charts").textContent = model.messages
      ? "No metrics in this run yet."
      : feed.stream.state === "waiting" || (this.store.list.loaded && !this.store.list.runs.has(feed.id))
        ? `There is no run “${feed.id}” in this directory (yet). It opens here as soon as its file appears.`
        : "Loading…";
    this.renderHparams(model);
    this.renderTimeline(model);
  }

  renderHparams(model) {
    const box = $("#hparams");
    if (!model.hparams) { box.hidden = true; return; }
    box.hidden = false;
    const body = $("tbody", box);
    body.replaceChildren();
    for (const [key, value] of Object.entries(model.hparams)) {
      const text = value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
      body.append(el("tr", {}, el("th", { scope: "row", text: key }), el("td", { text })));
    }
  }

  renderTimeline(model) {
    const list = $("#timeline");
    const seen = this.renderedTimeline;
    if (seen.model !== model || seen.resets !== model.resets || seen.dropped !== model.timelineDropped) {
      list.replaceChildren();
      seen.model = model;
      seen.resets = model.resets;
      seen.dropped = model.timelineDropped;
      seen.count = 0;
    }
    const fresh = model.timeline.slice(seen.count);
    seen.count = model.timeline.length;
    for (const item of fresh) {
      const li = el("li", { class: `event event-${item.kind}` });
      const time = el("time", { datetime: item.timestamp || "", text: item.timestamp ? new Date(parseTime(item.timestamp)).toLocaleTimeString() : "" });
      li.append(time, el("strong", { text: item.title }));
      if (item.detail) li.append(el("span", { class: "event-detail", text: item.detail }));
      if (item.traceback) {
        const details = el("details", {}, el("summary", { text: "traceback" }), el("pre", { text: item.traceback }));
        li.append(details);
      }
      list.append(li);
    }
    $("#timeline-empty").hidden = model.timeline.length > 0;
    $("#timeline-dropped").textContent = model.timelineDropped
      ? `${model.timelineDropped} earlier events not shown` : "";
  }
}
