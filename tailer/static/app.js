// runtail dashboard: the runs list, one run at #/runs/<id>, live and replayed.
//
// Metrics only ever arrive pushed over WebSockets: the firehose `/` keeps the
// runs list current, `/experiments/<id>?since=<last seq>` feeds the open run
// (its history, then live), `/experiments/<id>/replay?speed=S` a replay.
// GET /api/experiments is read once at load, again when the firehose names an
// experiment the list does not know yet, and after the firehose reconnects
// (discovery, never a metric poll). Every request carries the page's token.

// Siblings are imported with this module's query string (it carries the token).
const sibling = (name) => new URL(`./${name}${new URL(import.meta.url).search}`, import.meta.url).href;
const { ChartBoard } = await import(sibling("charts.js"));
const { RunModel, statusOf } = await import(sibling("model.js"));

const TOKEN = new URLSearchParams(location.search).get("token");

/** An absolute URL for `path` on this server (http or ws), with the token and `params`. */
function serverUrl(path, params = {}, ws = false) {
  const url = new URL(path, location.href);
  if (ws) url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
  }
  if (TOKEN) url.searchParams.set("token", TOKEN);
  url.hash = "";
  return url.toString();
}

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
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

/** Whether timestamp `a` is after `b` (RFC 3339 UTC; sub-millisecond digits compared as text). */
function isAfter(a, b) {
  if (!b) return true;
  if (!a) return false;
  const ta = parseTime(a), tb = parseTime(b);
  if (ta !== tb || !Number.isFinite(ta)) return ta > tb;
  return a > b;
}

// ------------------------------------------------------------------ sockets

const sockets = new Set();

/**
 * A WebSocket that reconnects with backoff. `path()` is called at every
 * (re)connect so it can ask for `since=<last seq>`. `finite` sockets (replay)
 * end on a normal close instead of reconnecting.
 */
class Stream {
  constructor(name, path, onMessage, { finite = false, onOpen, onEnd, absent } = {}) {
    this.name = name;
    this.absent = absent; // () => true while the server is known to have nothing here
    this.path = path;
    this.onMessage = onMessage;
    this.finite = finite;
    this.onOpen = onOpen;
    this.onEnd = onEnd;
    this.state = "connecting";
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.everOpened = false;
    sockets.add(this);
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const [path, params] = this.path();
    let ws;
    try {
      ws = new WebSocket(serverUrl(path, params, true));
    } catch (err) {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.everOpened = true;
      this.setState("connected");
      if (this.onOpen) this.onOpen();
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not ours to judge; the tailer only sends JSON
      }
      if (message && message.type === "pong") return;
      if (!this.finite && isReplayEnd(message)) {
        // `tailer replay FILE` serves `/` and `/experiments/<id>` as paced replays that
        // end here: the run is over, and reconnecting would only replay it again.
        this.end();
        return;
      }
      this.onMessage(message);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (this.finite && event.code === 1000) {
        this.stop();
        if (this.onEnd) this.onEnd(null);
        return;
      }
      // The server said no (1008 policy, 1011 internal error, 4xxx): retrying would
      // only repeat it. Lost connections (1001, 1006, 1012, 1013) are retried.
      if (this.finite && this.everOpened && ![1001, 1006, 1012, 1013].includes(event.code)) {
        this.stop();
        if (this.onEnd) this.onEnd(event.reason || `closed with code ${event.code}`);
        return;
      }
      this.retry();
    };
    ws.onerror = () => {}; // onclose follows and decides
  }

  retry() {
    this.attempt += 1;
    // 0.5 s, 1 s, 2 s, ... capped at 10 s, with jitter so many tabs do not stampede.
    const base = Math.min(10000, 500 * 2 ** (this.attempt - 1));
    let delay = base * (0.75 + Math.random() * 0.5);
    if (this.absent && this.absent()) {
      // Not a lost connection: the run does not exist (yet). Discovery kicks us
      // when its file appears; until then, a slow retry and no alarm.
      this.setState("waiting");
      delay = 5000;
    } else {
      this.setState(this.attempt > 5 || navigator.onLine === false ? "offline" : "reconnecting");
    }
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnect now (the browser came back online, or the tab was woken). */
  kick() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.connect();
  }

  setState(state) {
    this.state = state;
    renderConnection();
    if (view) { // the run view words its empty state after its stream's
      view.live.metaDirty = true;
      scheduleRender();
    }
  }

  /** The server finished a replay on this (live) stream: stay closed, say so. */
  end() {
    this.stopped = true;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.setState("ended");
    if (this.onEnd) this.onEnd(null);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    sockets.delete(this);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      if (ws.readyState === WebSocket.CONNECTING) ws.onopen = () => ws.close(1000);
      else ws.close(1000);
    }
    renderConnection();
  }
}

/** The frame a replay ends with (`tailer replay`); recorded lines always carry a seq. */
function isReplayEnd(message) {
  return Boolean(message) && message.type === "replay_end" && typeof message.seq !== "number";
}

function connectionState() {
  const all = [...sockets].map((s) => s.state);
  const states = all.filter((state) => state !== "waiting" && state !== "ended");
  if (!states.length) return all.includes("ended") ? "ended" : "offline";
  if (states.includes("offline")) return "offline";
  if (states.includes("reconnecting")) return "reconnecting";
  if (states.includes("connecting")) return "connecting";
  return "connected";
}

function renderConnection() {
  const state = connectionState();
  const node = $("#conn");
  if (node.dataset.state === state) return;
  node.dataset.state = state;
  $(".conn-label", node).textContent = {
    connected: "connected",
    connecting: "connecting…",
    reconnecting: "reconnecting…",
    offline: "offline — retrying",
    ended: "replay finished",
  }[state];
}

window.addEventListener("online", () => sockets.forEach((s) => s.kick()));

// ------------------------------------------------------------------ runs list

/** id -> {id, messages, status, lastTimestamp, lastSeq, error} */
const runs = new Map();
let listLoading = null; // the pending /api/experiments request
let listBuffer = []; // firehose frames that arrived while it was pending
let listDirty = true;
let listLoaded = false; // the list has been read from the server at least once
let authProblem = false;
let firehose = null;

let listAgain = false; // another request was asked for while one was pending

async function loadExperiments() {
  if (listLoading) {
    listAgain = true;
    return listLoading;
  }
  listLoading = (async () => {
    do {
      listAgain = false;
      listBuffer = [];
      let entries;
      try {
        const response = await fetch(serverUrl("/api/experiments"), { cache: "no-store" });
        if (response.status === 401 || response.status === 403) {
          authProblem = true;
          showNotice(response.status === 401
            ? "The server wants a token: open this page as /?token=<your token>."
            : "The server refused this page's origin or host (403).");
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        entries = await response.json();
      } catch (err) {
        return; // the firehose's reconnect will call us again
      }
      authProblem = false;
      showNotice("");
      mergeExperiments(entries);
      listLoaded = true;
    } while (listAgain);
  })();
  try {
    await listLoading;
  } finally {
    listLoading = null;
    // Frames that arrived during the request and are newer than what it reported.
    const buffered = listBuffer;
    listBuffer = [];
    for (const message of buffered) applyToList(message, true);
    scheduleRender();
  }
  return undefined;
}

function mergeExperiments(entries) {
  if (!Array.isArray(entries)) return;
  const seen = new Set();
  for (const entry of entries) {
    if (!entry || typeof entry.experiment_id !== "string") continue;
    const id = entry.experiment_id;
    seen.add(id);
    const run = runs.get(id) || { id, error: null };
    run.messages = Number(entry.messages) || 0;
    run.bytes = entry.bytes;
    run.status = entry.status || "unknown";
    run.firstTimestamp = entry.first_timestamp || null;
    run.lastTimestamp = entry.last_timestamp || null;
    // The seq of the last line the list counted (`lines` counts every line, as seq does).
    if (typeof entry.last_seq === "number") run.lastSeq = entry.last_seq;
    else if (typeof entry.lines === "number") run.lastSeq = entry.lines - 1;
    else run.lastSeq = null;
    // The tailer keeps the last `error` message's text per run as lines arrive.
    if ("error" in entry) run.error = typeof entry.error === "string" ? entry.error : null;
    runs.set(id, run);
  }
  for (const id of [...runs.keys()]) if (!seen.has(id)) runs.delete(id);
  if (view) {
    const listed = runs.get(view.id);
    if (listed && listed.lastSeq !== null && listed.lastSeq < view.live.lastSeq) {
      // The file is shorter than what we hold: it was truncated or replaced while
      // we were away (a log_reset we could not hear). Start the run over.
      view.restart();
    }
    if (listed) view.stream.kick();
    view.live.metaDirty = true; // its header reads the list (status, "no such run")
  }
  listDirty = true;
  scheduleRender();
}

/** Update the list from one firehose frame; `late` when replaying buffered frames. */
function applyToList(message, late = false) {
  const id = message.experiment_id;
  if (typeof id !== "string") return;
  if (message.type === "log_reset") {
    loadExperiments();
    return;
  }
  if (listLoading && !late) {
    listBuffer.push(message);
    return;
  }
  let run = runs.get(id);
  if (!run) {
    run = { id, messages: 0, status: "unknown", lastTimestamp: null, lastSeq: null, error: null };
    runs.set(id, run);
    // A new experiment: learn its real counts (once in a while per id, so a file
    // the list no longer has, deleted mid-flight, cannot start a request loop).
    const asked = discoveryAsked.get(id) || 0;
    if (Date.now() - asked > 5000) {
      discoveryAsked.set(id, Date.now());
      loadExperiments();
    }
    if (view && view.id === id) view.stream.kick(); // it was waiting for this file
  } else if (run.lastSeq !== null && typeof message.seq === "number") {
    // Counted already (by the list response, or by the other socket).
    if (message.seq <= run.lastSeq) return;
  } else if (!isAfter(message.timestamp, run.lastTimestamp)) {
    return; // a server without `lines` in its list: timestamps are all there is
  }
  run.messages = (run.messages || 0) + 1;
  if (typeof message.seq === "number") run.lastSeq = message.seq;
  if (message.timestamp) run.lastTimestamp = message.timestamp;
  const status = statusOf(message);
  if (status) run.status = status;
  if (message.type === "error" && message.data) run.error = String(message.data.error ?? "error");
  if (status === "running") run.error = null;
  listDirty = true;
  scheduleRender();
}

const discoveryAsked = new Map(); // id -> when an unknown id last made us read the list

const listItems = new Map(); // id -> <li>

function renderList() {
  listDirty = false;
  const list = $("#runs");
  const filter = $("#runs-filter").value.trim().toLowerCase();
  const ordered = [...runs.values()].sort((a, b) => {
    const ta = parseTime(a.lastTimestamp) || 0, tb = parseTime(b.lastTimestamp) || 0;
    return tb - ta || a.id.localeCompare(b.id);
  });
  const current = view ? view.id : null;
  const wanted = [];
  for (const run of ordered) {
    if (filter && !run.id.toLowerCase().includes(filter)) continue;
    let li = listItems.get(run.id);
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
      listItems.set(run.id, li);
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
  for (const [id, li] of listItems) {
    if (!runs.has(id)) { li.remove(); listItems.delete(id); }
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

function showNotice(text) {
  const notice = $("#notice");
  notice.textContent = text;
  notice.hidden = !text;
}

// ------------------------------------------------------------------ one run

let view = null;

class RunView {
  constructor(id) {
    this.id = id;
    this.live = new RunModel(id);
    this.model = this.live; // what the charts show: the live run or a replay
    this.board = new ChartBoard($("#charts"));
    this.board.bind(this.model);
    this.replay = null; // {model, stream, paused, buffer, state}
    this.renderedTimeline = { model: null, resets: -1, count: 0, dropped: 0 };
    this.stream = this.openLive();
    $("#run-title").textContent = id;
    $("#run").hidden = false;
    $("#welcome").hidden = true;
    this.renderMeta();
  }

  /** Drop what we hold of the live run and read it again from the start. */
  restart() {
    this.live.reset();
    if (this.model === this.live) this.renderedTimeline.resets = -1;
    this.stream.stop();
    this.stream = this.openLive();
    scheduleRender();
  }

  /** Whether the server is up and lists no such run (a stale link, or a run not started yet). */
  absent() {
    return listLoaded && !runs.has(this.id) && firehose !== null && firehose.state === "connected";
  }

  openLive() {
    const id = this.id;
    return new Stream(
      `run ${id}`,
      // From where we are: since=<last seq we hold>, so nothing is missed or repeated.
      () => [`/experiments/${encodeURIComponent(id)}`,
        this.live.lastSeq >= 0 ? { since: this.live.lastSeq } : {}],
      (message) => this.onLive(message),
      { absent: () => this.absent() },
    );
  }

  onLive(message) {
    if (message.experiment_id !== undefined && message.experiment_id !== this.id) return;
    if (message.type === "log_reset") {
      this.live.reset();
      if (this.model === this.live) this.renderedTimeline.resets = -1;
      scheduleRender();
      return;
    }
    if (this.live.apply(message)) {
      // The list entry too: whichever socket brings a seq first counts it, once.
      applyToList(message);
      scheduleRender();
    }
  }

  startReplay(speed) {
    this.stopReplay(false);
    const model = new RunModel(this.id);
    const replay = { model, paused: false, buffer: [], state: "playing", speed };
    replay.stream = new Stream(
      `replay ${this.id}`,
      () => [`/experiments/${encodeURIComponent(this.id)}/replay`, { speed }],
      (message) => {
        if (message.type === "replay_end") {
          replay.ended = true;
          if (!replay.paused) this.finishReplay(replay);
          else replay.buffer.push(message);
          return;
        }
        if (replay.paused) {
          replay.buffer.push(message);
          model.metaDirty = true; // the buffered count is shown
          scheduleRender();
        } else if (model.apply(message)) {
          scheduleRender();
        }
      },
      {
        finite: true,
        onOpen: () => {
          // A replay that reconnects starts over: the server replays from the start.
          if (model.messages) { model.reset(); scheduleRender(); }
        },
        onEnd: (problem) => {
          if (problem) replay.problem = problem;
          if (!replay.ended) this.finishReplay(replay);
        },
      },
    );
    this.replay = replay;
    this.show(model);
  }

  finishReplay(replay) {
    if (this.replay !== replay) return;
    replay.state = replay.problem ? "failed" : "finished";
    replay.stream.stop();
    scheduleRender();
  }

  pauseReplay() {
    const replay = this.replay;
    if (!replay || replay.state !== "playing" && replay.state !== "paused") return;
    if (!replay.paused) {
      replay.paused = true;
      replay.state = "paused";
    } else {
      replay.paused = false;
      replay.state = "playing";
      const buffered = replay.buffer;
      replay.buffer = [];
      for (const message of buffered) {
        if (message.type === "replay_end") this.finishReplay(replay);
        else replay.model.apply(message);
      }
    }
    this.renderMeta(); // the button's state at once, not on the next frame
    scheduleRender();
  }

  stopReplay(render = true) {
    if (!this.replay) return;
    this.replay.stream.stop();
    this.replay = null;
    if (render) this.show(this.live);
  }

  show(model) {
    this.model = model;
    this.board.bind(model);
    model.metaDirty = true;
    this.renderedTimeline.resets = -1;
    scheduleRender();
  }

  destroy() {
    this.stopReplay(false);
    this.stream.stop();
    this.board.clear();
  }

  flush() {
    const owed = window.Plotly ? this.board.flush() : false; // charts wait for plotly
    if (this.model.metaDirty || this.live.metaDirty) this.renderMeta();
    return owed;
  }

  renderMeta() {
    const live = this.live;
    const model = this.model;
    model.metaDirty = false;
    live.metaDirty = false;
    const listed = runs.get(this.id);
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
    const replay = this.replay;
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
      : this.stream.state === "waiting" || (listLoaded && !runs.has(this.id))
        ? `There is no run “${this.id}” in this directory (yet). It opens here as soon as its file appears.`
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

// ------------------------------------------------------------------ routing and rendering

function route() {
  const match = location.hash.match(/^#\/runs\/(.+)$/);
  const id = match ? decodeURIComponent(match[1]) : null;
  if (view && view.id !== id) {
    view.destroy();
    view = null;
  }
  if (id && !view) {
    view = new RunView(id);
    document.title = `${id} · runtail`;
  }
  if (!id) {
    $("#run").hidden = true;
    $("#welcome").hidden = false;
    document.title = "runtail";
  }
  document.body.dataset.route = id ? "run" : "list";
  listDirty = true;
  scheduleRender();
}

let frameRequested = false;
let owedTimer = null;

function scheduleRender() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(render);
}

function render() {
  frameRequested = false;
  if (listDirty) renderList();
  if (view && view.flush()) {
    // Charts are waiting: for the frame budget, or a thinned one for its next slot.
    clearTimeout(owedTimer);
    owedTimer = setTimeout(scheduleRender, 40);
  }
}

// ------------------------------------------------------------------ start

function start() {
  $("#runs-filter").addEventListener("input", () => { listDirty = true; scheduleRender(); });
  $("#replay-play").addEventListener("click", () => {
    if (view) view.startReplay(Number($("#replay-speed").value));
  });
  $("#replay-pause").addEventListener("click", () => view && view.pauseReplay());
  $("#replay-stop").addEventListener("click", () => view && view.stopReplay());
  window.addEventListener("hashchange", route);
  window.addEventListener("runtail:plotly", scheduleRender);
  const scheme = window.matchMedia("(prefers-color-scheme: dark)");
  scheme.addEventListener("change", () => view && view.board.applyTheme());
  // Relative times ("12 s ago") age on their own; this redraws text, it fetches nothing.
  setInterval(() => { listDirty = true; scheduleRender(); }, 5000);

  let firehoseOpened = false;
  firehose = new Stream("firehose", () => ["/", {}], (message) => applyToList(message), {
    onOpen: () => {
      // At load, and after a reconnect: what happened while we were away.
      if (firehoseOpened || !listLoading) loadExperiments();
      firehoseOpened = true;
    },
  });
  loadExperiments();
  route();
}

// Test hook: read-only views of what the page holds.
window.__runtail = {
  connection: connectionState,
  runs: () => [...runs.values()].map((r) => ({ ...r })),
  view: () => view && {
    id: view.id,
    replay: view.replay ? view.replay.state : null,
    live: { messages: view.live.messages, lastSeq: view.live.lastSeq, status: view.live.status },
    shown: { messages: view.model.messages, lastSeq: view.model.lastSeq, status: view.model.status },
    charts: view.board.describe(),
    // Every chart shows every point the model holds (nothing waits for a frame).
    settled: view.model.dirtyCharts.size === 0 && view.board.deferred.size === 0
      && view.model.charts.size === view.board.states.size,
  },
};

start();
