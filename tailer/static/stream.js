//# allFunctionsCalledOnLoad
// (V8: compile this module whole off the main thread as it loads; docs/DESIGN.md §9.)
// WebSocket streams: connect, reconnect with backoff, report state and messages.
//
// No DOM here. A stream only tells its owner two things: its connection state
// (`onState`) and each message (`onMessage`). What the page makes of them is
// the store's and the views' business.

/** An absolute URL for `path` on this server (http or ws) with `params`. */
export function serverUrl(path, params = {}, ws = false) {
  const url = new URL(path, location.href);
  if (ws) url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
  }
  url.hash = "";
  return url.toString();
}

/** The frame a replay ends with (`tailer replay`); recorded lines always carry a seq. */
export function isReplayEnd(message) {
  return Boolean(message) && message.type === "replay_end" && typeof message.seq !== "number";
}

// Close codes of a lost connection, worth retrying even on a finite stream.
const LOST = [1001, 1006, 1012, 1013];

/**
 * A WebSocket that reconnects with backoff. `target()` gives `[path, params]`
 * at every (re)connect so it can ask for `since=<last seq>`. `finite` streams
 * (replay) end on a normal close instead of reconnecting.
 *
 * States: connecting, connected, reconnecting, offline, waiting (the server is
 * known to have nothing here yet: `absent()`), ended.
 */
export class Stream {
  constructor(target, { onMessage, onState, onOpen, onEnd, finite = false, absent } = {}) {
    this.target = target;
    this.onMessage = onMessage || (() => {});
    this.onState = onState || (() => {});
    this.onOpen = onOpen;
    this.onEnd = onEnd;
    this.finite = finite;
    this.absent = absent;
    this.state = "connecting";
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.everOpened = false;
    this.ws = null;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const [path, params] = this.target();
    let ws;
    try {
      ws = new WebSocket(serverUrl(path, params, true));
    } catch {
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
      // only repeat it. Lost connections are retried.
      if (this.finite && this.everOpened && !LOST.includes(event.code)) {
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

  /** Reconnect now (the browser came back online, or the run's file appeared). */
  kick() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.connect();
  }

  setState(state) {
    this.state = state;
    this.onState(state);
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
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      if (ws.readyState === WebSocket.CONNECTING) ws.onopen = () => ws.close(1000);
      else ws.close(1000);
    }
    this.setState("stopped");
  }
}

/**
 * Every open stream of the page, so the page can show one connection state.
 * `onChange` is called whenever any stream's state changes.
 */
export class Streams {
  constructor(onChange = () => {}) {
    this.all = new Set();
    this.onChange = onChange;
  }

  /** A new Stream (same arguments), counted until it stops. */
  open(target, options = {}) {
    const onState = options.onState;
    const stream = new Stream(target, {
      ...options,
      onState: (state) => {
        if (state === "stopped") this.all.delete(stream);
        if (onState) onState(state);
        this.onChange();
      },
    });
    this.all.add(stream);
    this.onChange();
    return stream;
  }

  kickAll() {
    this.all.forEach((s) => s.kick());
  }

  /** The page's connection state: the worst of its streams'. */
  state() {
    return connectionState([...this.all].map((s) => s.state));
  }
}

/** One state for a set of stream states (pure). */
export function connectionState(all) {
  const states = all.filter((state) => state !== "waiting" && state !== "ended");
  if (!states.length) return all.includes("ended") ? "ended" : "offline";
  if (states.includes("offline")) return "offline";
  if (states.includes("reconnecting")) return "reconnecting";
  if (states.includes("connecting")) return "connecting";
  return "connected";
}
