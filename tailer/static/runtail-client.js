/**
 * runtail-client.js: a drop-in for the React app's `createTrainingProgressWebSocket`
 * (src/services/websocket.ts), with routing and zero loss. Dependency-free ES module.
 *
 * Same methods (`on`, `off`, `connect`, `disconnect`, `isConnectedState`,
 * `removeAllListeners`) and events (`connected`, `disconnected`, `reconnecting`,
 * `reconnected`, and one per message type, with `message.data` as the argument),
 * but it:
 *   - subscribes to `/experiments/<id>` (only that run, from its first line),
 *   - resumes after any drop with `since=<last seq>`, so nothing is lost,
 *   - drops a message whose `seq` it already has (a resume may overlap),
 *   - reconnects with backoff (0.5 s doubling to 10 s, jittered) without a limit,
 *   - fires `reconnected` after each successful reconnect.
 * Listeners also get the whole wire message as a second argument (`seq`,
 * `experiment_id`, `timestamp`). `log_reset` (the run's file was truncated or
 * replaced) restarts the numbering; `replay_end` (`tailer replay`) ends the
 * stream without reconnecting.
 *
 * Server address: `options.url`, else `globalThis.RUNTAIL_URL`, else the tailer
 * this file was loaded from (`/static/runtail-client.js`), else
 * `ws://localhost:8765` (the React app's VITE_WS_BASE_URL default).
 */

const PING_INTERVAL = 30000; // as the original: the tailer answers {"type":"pong"}
const RECONNECT_DELAY = 500;
const MAX_RECONNECT_DELAY = 10000;

function defaultBaseUrl() {
  if (typeof globalThis.RUNTAIL_URL === "string") return globalThis.RUNTAIL_URL;
  try {
    const here = new URL(import.meta.url);
    if (/^https?:$/.test(here.protocol) && here.pathname.endsWith("/static/runtail-client.js")) {
      const scheme = here.protocol === "https:" ? "wss:" : "ws:";
      return `${scheme}//${here.host}${here.pathname.slice(0, -"static/runtail-client.js".length)}`;
    }
  } catch {
    // import.meta.url is not a URL (bundled): fall through
  }
  return "ws://localhost:8765";
}

/** The WebSocket base URL used when no `options.url` is given. */
export function getWebSocketBaseUrl() {
  return defaultBaseUrl();
}

export class TrainingProgressWebSocket {
  /**
   * @param {string} experimentId the run to follow (its `<id>.jsonl` in the tailer's DIR)
   * @param {object} [options] `url`, `token`, `since` (-1: from the start), `reconnectDelay`,
   *   `maxReconnectDelay`, `pingInterval` (ms)
   */
  constructor(experimentId, options = {}) {
    this.experimentId = experimentId;
    this.options = options;
    this.listeners = new Map();
    this.ws = null;
    this.isConnected = false;
    this.shouldReconnect = true;
    this.ended = false;
    this.everConnected = false;
    this.reconnectAttempts = 0;
    this.reconnectTimeout = null;
    this.pingInterval = null;
    /** The last `seq` delivered to listeners; the next connection asks for what follows. */
    this.lastSeq = typeof options.since === "number" ? options.since : -1;
  }

  url() {
    const base = (this.options.url || defaultBaseUrl()).replace(/\/+$/, "");
    const params = new URLSearchParams({ since: String(this.lastSeq) });
    if (this.options.token) params.set("token", this.options.token);
    return `${base}/experiments/${encodeURIComponent(this.experimentId)}?${params}`;
  }

  /** Open the connection (again, after `disconnect()`). */
  connect() {
    if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) {
      return;
    }
    this.shouldReconnect = true;
    this.ended = false;
    clearTimeout(this.reconnectTimeout);
    this.reconnectTimeout = null;
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (error) {
      console.error("[runtail] cannot open a WebSocket:", error);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => this.handleOpen(ws);
    ws.onmessage = (event) => this.handleMessage(ws, event);
    ws.onerror = () => {}; // a close event follows and decides
    ws.onclose = (event) => this.handleClose(ws, event);
  }

  /** Close for good: no reconnect until `connect()` is called again. */
  disconnect() {
    this.shouldReconnect = false;
    this.stopPing();
    clearTimeout(this.reconnectTimeout);
    this.reconnectTimeout = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    if (this.isConnected) {
      this.isConnected = false;
      this.emit("disconnected", { code: 1000, reason: "disconnect()" });
    }
  }

  isConnectedState() {
    return this.isConnected && this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  handleOpen(ws) {
    if (ws !== this.ws) return;
    const reconnected = this.everConnected;
    this.isConnected = true;
    this.everConnected = true;
    this.reconnectAttempts = 0;
    this.startPing();
    this.emit("connected", { experiment_id: this.experimentId });
    if (reconnected) this.emit("reconnected", {});
  }

  handleMessage(ws, event) {
    if (ws !== this.ws) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return; // the tailer only sends JSON objects
    }
    if (!message || typeof message.type !== "string") return;
    if (typeof message.seq === "number") {
      if (message.seq <= this.lastSeq) return; // already delivered (a resume overlaps)
      this.lastSeq = message.seq;
    } else if (message.type === "log_reset") {
      this.lastSeq = -1; // the file was truncated or replaced: numbering starts again
    } else if (message.type === "replay_end") {
      this.ended = true; // `tailer replay`: the run is over, a reconnect would replay it
    }
    this.emit(message.type, message.data === undefined ? {} : message.data, message);
  }

  handleClose(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    const wasConnected = this.isConnected;
    this.isConnected = false;
    this.stopPing();
    if (wasConnected) this.emit("disconnected", { code: event.code, reason: event.reason });
    if (this.shouldReconnect && !this.ended) this.scheduleReconnect();
  }

  scheduleReconnect() {
    this.reconnectAttempts += 1;
    const base = this.options.reconnectDelay ?? RECONNECT_DELAY;
    const cap = this.options.maxReconnectDelay ?? MAX_RECONNECT_DELAY;
    const delay = Math.min(cap, base * 2 ** Math.min(this.reconnectAttempts - 1, 20)) * (0.75 + Math.random() * 0.5);
    this.emit("reconnecting", { attempt: this.reconnectAttempts, delay: Math.round(delay) });
    clearTimeout(this.reconnectTimeout);
    this.reconnectTimeout = setTimeout(() => {
      this.reconnectTimeout = null;
      if (this.shouldReconnect) this.connect();
    }, delay);
  }

  startPing() {
    this.stopPing();
    const every = this.options.pingInterval ?? PING_INTERVAL;
    this.pingInterval = setInterval(() => {
      if (this.isConnectedState()) this.ws.send(JSON.stringify({ type: "ping" }));
    }, every);
  }

  stopPing() {
    clearInterval(this.pingInterval);
    this.pingInterval = null;
  }

  emit(event, data, message) {
    const listeners = this.listeners.get(event);
    if (!listeners) return;
    for (const listener of [...listeners]) {
      try {
        listener(data, message);
      } catch (error) {
        console.error(`[runtail] error in ${event} listener:`, error);
      }
    }
  }

  /** Add a listener; returns a function that removes it. */
  on(event, listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    const listeners = this.listeners.get(event);
    if (!listeners) return;
    const index = listeners.indexOf(listener);
    if (index > -1) listeners.splice(index, 1);
  }

  /** Remove the listeners of one event, or of all events. */
  removeAllListeners(event) {
    if (event === undefined) this.listeners.clear();
    else this.listeners.delete(event);
  }
}

/** Create a client for one experiment (call `connect()` to start, as with the original). */
export function createTrainingProgressWebSocket(experimentId, options) {
  return new TrainingProgressWebSocket(experimentId, options);
}

export default TrainingProgressWebSocket;
