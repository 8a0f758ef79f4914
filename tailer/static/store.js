//# allFunctionsCalledOnLoad
// (V8: compile this module whole off the main thread as it loads; docs/DESIGN.md §9.)
// The page's state: the runs list, the open runs' data, the route (URL state).
//
// No DOM here. The store owns the streams (through `Streams`) and the models
// (model.js); views read it and are told to redraw through `onChange`. Metrics
// only ever arrive pushed over WebSockets: the firehose `/` keeps the runs list
// current, `/experiments/<id>?since=<last seq>` feeds each open run (its
// history, then live), `/experiments/<id>/replay?speed=S` a replay.
// GET /api/experiments is read at load, again when the firehose names an
// experiment the list does not know yet, and after the firehose reconnects
// (discovery, never a metric poll).

import { RunModel, statusOf } from "./model.js";
import { openFeed } from "./reduced.js";
import { Streams, serverUrl } from "./stream.js";

/** Whether timestamp `a` is after `b` (RFC 3339 UTC; sub-millisecond digits compared as text). */
export function isAfter(a, b) {
  if (!b) return true;
  if (!a) return false;
  const ta = Date.parse(a), tb = Date.parse(b);
  if (ta !== tb || !Number.isFinite(ta)) return ta > tb;
  return a > b;
}

// ------------------------------------------------------------------ the route

/** A valid experiment id (DESIGN §1); the page asks the server for nothing else. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

const AXES = ["step", "epoch", "time", "wall"];

/** The chart options a route carries, with defaults for what is missing or invalid. */
export function parseOptions(params) {
  const x = params.get("x");
  const smooth = Number(params.get("smooth"));
  return {
    x: AXES.includes(x) ? x : "step",
    smooth: Number.isFinite(smooth) && smooth >= 0 && smooth < 1 ? smooth : 0,
    logy: params.get("logy") === "1",
    filter: params.get("filter") || "",
  };
}

function decode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * What `location.hash` asks for: {view: "list"|"run"|"compare", id, runs,
 * options, invalid} — `#/runs/ID?x=…` or `#/compare?runs=A,B&x=…`.
 */
export function parseRoute(hash) {
  const text = String(hash || "");
  const q = text.indexOf("?");
  const path = q < 0 ? text : text.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : text.slice(q + 1));
  const options = parseOptions(params);
  const match = path.match(/^#\/runs\/(.+)$/);
  if (match) {
    const id = decode(match[1]);
    return { view: "run", id, runs: [id], options, invalid: ID_PATTERN.test(id) ? [] : [id] };
  }
  if (path === "#/compare") {
    const runs = [...new Set((params.get("runs") || "").split(",").map((r) => r.trim()).filter(Boolean))];
    return { view: "compare", id: null, runs, options, invalid: runs.filter((r) => !ID_PATTERN.test(r)) };
  }
  return { view: "list", id: null, runs: [], options, invalid: [] };
}

/** The hash for a route (its options only where they differ from the defaults). */
export function routeHash({ view, id, runs = [], options = {} }) {
  const params = new URLSearchParams();
  if (view === "compare") params.set("runs", runs.join(","));
  if (options.x && options.x !== "step") params.set("x", options.x);
  if (options.smooth) params.set("smooth", String(options.smooth));
  if (options.logy) params.set("logy", "1");
  if (options.filter) params.set("filter", options.filter);
  const query = params.toString().replace(/%2C/g, ",");
  const base = view === "run" ? `#/runs/${encodeURIComponent(id)}` : view === "compare" ? "#/compare" : "#/";
  return query ? `${base}?${query}` : base;
}

// ------------------------------------------------------------------ one open run

/**
 * One run the page shows: the live model fed by `/experiments/<id>`, and an
 * optional replay of it. `model` is what the charts show (live or replay).
 */
export class RunFeed {
  constructor(store, id) {
    this.store = store;
    this.id = id;
    this.live = new RunModel(id);
    this.model = this.live;
    this.replay = null; // {model, stream, paused, buffer, state, speed, ended, problem}
    this.stream = openFeed(this); // a big run's history comes reduced first (reduced.js)
  }

  openLive() {
    const id = this.id;
    return this.store.streams.open(
      // From where we are: since=<last seq we hold>, so nothing is missed or repeated.
      () => [`/experiments/${encodeURIComponent(id)}`,
        this.live.lastSeq >= 0 ? { since: this.live.lastSeq } : {}],
      {
        onMessage: (message) => this.onLive(message),
        onState: () => { this.live.metaDirty = true; }, // the empty state is worded after it
        absent: () => this.store.absent(id),
      },
    );
  }

  /** Drop what we hold of the live run and read it again from the start. */
  restart() {
    this.live.reset();
    this.stream.stop();
    this.stream = openFeed(this);
    this.store.changed();
  }

  onLive(message) {
    if (message.experiment_id !== undefined && message.experiment_id !== this.id) return;
    if (message.type === "log_reset") {
      this.live.reset();
      this.store.changed();
      return;
    }
    if (this.live.apply(message)) {
      // The list entry too: whichever socket brings a seq first counts it, once.
      this.store.list.apply(message);
      this.store.changed();
    }
  }

  startReplay(speed) {
    this.stopReplay(false);
    const model = new RunModel(this.id);
    const replay = { model, paused: false, buffer: [], state: "playing", speed };
    replay.stream = this.store.streams.open(
      () => [`/experiments/${encodeURIComponent(this.id)}/replay`, { speed }],
      {
        finite: true,
        onMessage: (message) => {
          if (message.type === "replay_end") {
            replay.ended = true;
            if (!replay.paused) this.finishReplay(replay);
            else replay.buffer.push(message);
            return;
          }
          if (replay.paused) {
            replay.buffer.push(message);
            model.metaDirty = true; // the buffered count is shown
            this.store.changed();
          } else if (model.apply(message)) {
            this.store.changed();
          }
        },
        onOpen: () => {
          // A replay that reconnects starts over: the server replays from the start.
          if (model.messages) { model.reset(); this.store.changed(); }
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
    this.live.metaDirty = true;
    this.store.changed();
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
    this.live.metaDirty = true;
    this.store.changed();
  }

  stopReplay(show = true) {
    if (!this.replay) return;
    this.replay.stream.stop();
    this.replay = null;
    if (show) this.show(this.live);
  }

  show(model) {
    this.model = model;
    model.metaDirty = true;
    this.live.metaDirty = true;
    this.store.changed();
  }

  close() {
    this.stopReplay(false);
    this.stream.stop();
  }
}

// ------------------------------------------------------------------ the runs list

/** id -> {id, messages, status, firstTimestamp, lastTimestamp, lastSeq, error} */
export class RunsList {
  constructor(store) {
    this.store = store;
    this.runs = new Map();
    this.loading = null; // the pending /api/experiments request
    this.buffer = []; // firehose frames that arrived while it was pending
    this.again = false; // another request was asked for while one was pending
    this.loaded = false; // read from the server at least once
    this.authProblem = false;
    this.discoveryAsked = new Map(); // id -> when an unknown id last made us read the list
  }

  async load() {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      do {
        this.again = false;
        this.buffer = [];
        let entries;
        try {
          const response = await fetch(serverUrl("/api/experiments"), { cache: "no-store" });
          if (response.status === 401 || response.status === 403) {
            this.authProblem = true;
            this.store.notify(response.status === 401
              ? "The server wants a token: open this page as /?token=<your token>."
              : "The server refused this page's origin or host (403).");
            return;
          }
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          entries = await response.json();
        } catch {
          return; // the firehose's reconnect will call us again
        }
        this.authProblem = false;
        this.store.notify("");
        this.merge(entries);
        this.loaded = true;
      } while (this.again);
    })();
    try {
      await this.loading;
    } finally {
      this.loading = null;
      // Frames that arrived during the request and are newer than what it reported.
      const buffered = this.buffer;
      this.buffer = [];
      for (const message of buffered) this.apply(message, true);
      this.store.changed(true);
    }
    return undefined;
  }

  merge(entries) {
    if (!Array.isArray(entries)) return;
    const seen = new Set();
    for (const entry of entries) {
      if (!entry || typeof entry.experiment_id !== "string") continue;
      const id = entry.experiment_id;
      seen.add(id);
      const run = this.runs.get(id) || { id, error: null };
      run.messages = Number(entry.messages) || 0;
      run.bytes = entry.bytes;
      run.status = entry.status || "unknown";
      run.firstTimestamp = entry.first_timestamp || null;
      run.lastTimestamp = entry.last_timestamp || null;
      // The seq of the last line the list counted (`lines` counts every line, as seq does).
      if (typeof entry.last_seq === "number") run.lastSeq = entry.last_seq;
      else if (typeof entry.lines === "number") run.lastSeq = entry.lines - 1;
      else run.lastSeq = null;
      // Per-rank files name their run and rank (DESIGN §10); `stale`: seconds since the last line.
      run.run = typeof entry.run === "string" ? entry.run : id;
      run.rank = typeof entry.rank === "number" ? entry.rank : null;
      run.stale = typeof entry.stale === "number" ? entry.stale : null;
      run.staleAt = Date.now();
      // The tailer keeps the last `error` message's text per run as lines arrive.
      if ("error" in entry) run.error = typeof entry.error === "string" ? entry.error : null;
      this.runs.set(id, run);
    }
    for (const id of [...this.runs.keys()]) if (!seen.has(id)) this.runs.delete(id);
    for (const feed of this.store.feeds.values()) {
      const listed = this.runs.get(feed.id);
      if (listed && listed.lastSeq !== null && listed.lastSeq < feed.live.lastSeq) {
        // The file is shorter than what we hold: it was truncated or replaced while
        // we were away (a log_reset we could not hear). Start the run over.
        feed.restart();
      }
      if (listed) feed.stream.kick();
      feed.live.metaDirty = true; // its header reads the list (status, "no such run")
    }
    this.store.openFeeds(); // a run's rank files may have appeared
    this.store.loadHparams();
    this.store.changed(true);
  }

  /** Update the list from one frame; `late` when replaying buffered frames. */
  apply(message, late = false) {
    const id = message.experiment_id;
    if (typeof id !== "string") return;
    if (message.type === "log_reset") {
      this.load();
      return;
    }
    if (this.loading && !late) {
      this.buffer.push(message);
      return;
    }
    let run = this.runs.get(id);
    if (!run) {
      run = { id, run: id, rank: null, messages: 0, status: "unknown", lastTimestamp: null, lastSeq: null, error: null };
      this.runs.set(id, run);
      // A new experiment: learn its real counts (once in a while per id, so a file
      // the list no longer has, deleted mid-flight, cannot start a request loop).
      const asked = this.discoveryAsked.get(id) || 0;
      if (Date.now() - asked > 5000) {
        this.discoveryAsked.set(id, Date.now());
        this.load();
      }
      const feed = this.store.feeds.get(id);
      if (feed) feed.stream.kick(); // it was waiting for this file
    } else if (run.lastSeq !== null && typeof message.seq === "number") {
      // Counted already (by the list response, or by the other socket).
      if (message.seq <= run.lastSeq) return;
    } else if (!isAfter(message.timestamp, run.lastTimestamp)) {
      return; // a server without `lines` in its list: timestamps are all there is
    }
    run.messages = (run.messages || 0) + 1;
    run.stale = 0;
    run.staleAt = Date.now();
    if (typeof message.seq === "number") run.lastSeq = message.seq;
    if (message.timestamp) run.lastTimestamp = message.timestamp;
    const status = statusOf(message);
    if (status) run.status = status;
    if (message.type === "error" && message.data) run.error = String(message.data.error ?? "error");
    if (status === "running") run.error = null;
    this.store.changed(true);
  }
}

// ------------------------------------------------------------------ the store

export class Store {
  /**
   * `onChange(listChanged)` is called after anything the views show changed;
   * `onNotice(text)` with a problem to show ("" when it is gone).
   */
  constructor({ onChange = () => {}, onNotice = () => {} } = {}) {
    this.onChange = onChange;
    this.onNotice = onNotice;
    this.streams = new Streams(() => this.changed());
    this.list = new RunsList(this);
    this.feeds = new Map(); // id -> RunFeed, the runs the route shows
    this.route = parseRoute("");
    this.firehose = null;
    this.feedsVersion = 0; // +1 whenever the set of open feeds changes
    this.selection = new Set(); // runs ticked in the list
    this.hparams = new Map(); // id -> {key: value}, for the list's key=value filter
  }

  changed(listChanged = false) {
    this.onChange(listChanged);
  }

  notify(text) {
    this.onNotice(text);
  }

  /** Whether the server is up and lists no such run (a stale link, or a run not started yet). */
  absent(id) {
    return this.list.loaded && !this.list.runs.has(id)
      && this.firehose !== null && this.firehose.state === "connected";
  }

  /** The files of a run: its per-rank files (`<id>.rank<N>`, DESIGN §10), or the run's own. */
  filesOf(run) {
    const ranks = [...this.list.runs.values()]
      .filter((r) => r.run === run && r.id !== run)
      .sort((a, b) => (a.rank ?? 0) - (b.rank ?? 0) || a.id.localeCompare(b.id));
    return ranks.length ? ranks.map((r) => r.id) : [run];
  }

  /** Follow a new `location.hash`. */
  setRoute(hash) {
    this.route = parseRoute(hash);
    // The runs compared are the runs ticked in the list.
    if (this.route.view === "compare") this.selection = new Set(this.route.runs);
    this.openFeeds();
  }

  /** Open the feeds the route needs (every file of every run it shows), close the others. */
  openFeeds() {
    const valid = this.route.runs.filter((r) => !this.route.invalid.includes(r));
    const wanted = new Set(valid.flatMap((run) => this.filesOf(run)));
    let changed = false;
    for (const [id, feed] of this.feeds) {
      if (!wanted.has(id)) { feed.close(); this.feeds.delete(id); changed = true; }
    }
    for (const id of wanted) {
      if (!this.feeds.has(id)) { this.feeds.set(id, new RunFeed(this, id)); changed = true; }
    }
    if (changed) this.feedsVersion += 1;
    this.changed(true);
  }

  /** [{feed, run, rank}] of the route's runs, in its order. */
  members() {
    const out = [];
    for (const run of this.route.runs) {
      for (const id of this.filesOf(run)) {
        const feed = this.feeds.get(id);
        if (!feed) continue;
        const listed = this.list.runs.get(id);
        out.push({ feed, run, rank: listed && listed.run === run && id !== run ? listed.rank ?? null : null });
      }
    }
    return out;
  }

  /** Read every run's hyperparameters (for the list's key=value filter); at most every 5 s. */
  async loadHparams() {
    if (this.hparamsLoading || Date.now() - (this.hparamsAt || 0) < 5000) return;
    this.hparamsLoading = true;
    try {
      const response = await fetch(serverUrl("/api/hparams"), { cache: "no-store" });
      if (!response.ok) return;
      const body = await response.json();
      // The same code as a live run's turns the messages into hyperparameters.
      const hparams = new Map();
      for (const [id, messages] of Object.entries(body || {})) {
        const model = new RunModel(id);
        if (Array.isArray(messages)) messages.forEach((message) => model.apply(message));
        if (model.hparams) hparams.set(id, model.hparams);
      }
      this.hparams = hparams;
      this.hparamsAt = Date.now();
      this.changed(true);
    } catch {
      // the list works without them
    } finally {
      this.hparamsLoading = false;
    }
  }

  /** Open the firehose and read the list: call once. */
  start() {
    let opened = false;
    this.firehose = this.streams.open(() => ["/", {}], {
      onMessage: (message) => this.list.apply(message),
      onOpen: () => {
        // At load, and after a reconnect: what happened while we were away.
        if (opened || !this.list.loading) this.list.load();
        opened = true;
      },
    });
    this.list.load();
  }
}
