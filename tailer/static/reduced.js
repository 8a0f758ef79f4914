//# allFunctionsCalledOnLoad
// (V8: compile this module whole off the main thread as it loads; docs/DESIGN.md §9.)
// Large runs: history from GET /api/series (reduced on the server), live lines
// from the WebSocket. No DOM here.
//
// A run longer than REDUCED_FROM_LINES lines does not stream its every line to
// the page. Its history arrives as (docs/DESIGN.md §9):
//   1. the catalogue: the run's events (every message that is not of a bulk
//      type: status, epoch_end, hparams, ...), applied to the model as if
//      streamed, and the list of its series;
//   2. per metric of a bulk type (batch_metrics, ...), the series reduced to
//      about four points per pixel column (first, last, min, max), all
//      answered up to the catalogue's `seq` (one snapshot); their points enter
//      the model through its own handlers, so they land on the charts and
//      lines the streamed messages would have made;
//   3. the WebSocket from `since=seq`: every later line, once.
// A zoomed chart asks the server for its visible range again (raw points when
// they fit) through `remotePoints`, which series-data.js consults.

import { serverUrl } from "./stream.js";

/** Runs with more lines than this load their history reduced (a test may lower it by
 * setting `window.RUNTAIL_REDUCED_FROM_LINES` before the page's modules load). */
export const REDUCED_FROM_LINES = Number.isFinite(globalThis.RUNTAIL_REDUCED_FROM_LINES)
  ? globalThis.RUNTAIL_REDUCED_FROM_LINES : 20000;
/** ... or a file this big (while the tailer still reads a big file in, `lines` lags). */
const REDUCED_FROM_BYTES = REDUCED_FROM_LINES * 128;
/** Pixel columns asked for: the server keeps at most 4 points per column, so a history
 * stays under charts.js' RAW_LIMIT (4000) and live points are drawn as they come. */
const HISTORY_WIDTH = 900;

async function getJson(params, first = null) {
  // 503 with Retry-After: the tailer is still reading the run (a cold file of millions of
  // lines takes seconds); ask again, for up to ten minutes.
  for (let attempt = 0; ; attempt++) {
    const response = await ((attempt === 0 && first)
      || fetch(serverUrl("/api/series", params), { cache: "no-store" }));
    if (response.status === 503 && response.headers.has("Retry-After") && attempt < 600) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    if (!response.ok) throw new Error(`/api/series: HTTP ${response.status}`);
    if (response.status === 204) return null; // `if_over`: the run is not that big
    return response.json();
  }
}

/**
 * What a page asks first of a run it opens: the catalogue with the history of every bulk
 * metric (`bulk=1`, one snapshot), answered only if the run is big (`if_over`, else 204).
 * index.html sends this very request for the runs in the address before any module
 * loads; `takeEarly` hands its response over.
 */
export function firstRequest(run) {
  return { run, if_over: REDUCED_FROM_BYTES, bulk: 1, x: "step", width: HISTORY_WIDTH,
    max_raw: 4 * HISTORY_WIDTH };
}

/** The response index.html already asked for with `params` (once), or null. */
function takeEarly(params) {
  const early = globalThis.__runtailEarly;
  const url = serverUrl("/api/series", params);
  const response = early && early[url];
  if (!response) return null;
  delete early[url];
  return response;
}

/** Whether the list entry of a run says it is long enough for the reduced path. */
export function wantsReduced(listed) {
  if (!listed) return false;
  return (typeof listed.lastSeq === "number" && listed.lastSeq + 1 > REDUCED_FROM_LINES)
    || (typeof listed.bytes === "number" && listed.bytes > REDUCED_FROM_BYTES);
}

/** A message that makes the model's handler of `type` draw one value at `x` (no seq: not a line). */
function syntheticMessage(series, x, y) {
  const data = series.type === "metrics" ? { metrics: { [series.metric]: y } } : { [series.metric]: y };
  data.step = x;
  if (series.client_id !== null) data.client_id = series.client_id;
  if (series.phase !== null && data.phase === undefined) data.phase = series.phase;
  return { type: series.type, data };
}

/** The single line of `model` that holds exactly one point more than in `before`, or null. */
function onlyGrown(model, before) {
  let found = null;
  for (const chart of model.charts.values()) {
    for (const s of chart.traces.values()) {
      const grew = s.length - (before.get(s) || 0);
      if (grew === 0) continue;
      if (grew !== 1 || found) return null;
      found = s;
    }
  }
  return found;
}

/**
 * Put the reduced points of one server series into `model`, and mark the model
 * series that received them as remote (so a zoom asks the server again).
 */
function applySeries(model, run, remote, answer) {
  const before = new Map();
  for (const chart of model.charts.values()) {
    for (const s of chart.traces.values()) before.set(s, s.length);
  }
  const messages = model.messages;
  const n = answer.x.length;
  let line = null; // the one line the first point went to
  for (let i = 0; i < n; i++) {
    const y = answer.y[i] === null ? NaN : answer.y[i];
    if (line) {
      // The rest of the series goes where its first point went, under the same rules
      // (same line, source and attempt): appended at once, not as a message each.
      line.push({ step: answer.x[i] }, y);
      continue;
    }
    model.apply(syntheticMessage(answer, answer.x[i], y));
    line = onlyGrown(model, before);
  }
  if (line && n) {
    let last = model.lastStep;
    for (let i = 1; i < n; i++) if (last === null || answer.x[i] > last) last = answer.x[i];
    model.lastStep = last;
  }
  model.messages = messages; // not lines of the run: the count comes from the catalogue
  for (const chart of model.charts.values()) {
    for (const s of chart.traces.values()) {
      if (s.length > (before.get(s) || 0)) {
        s.remote = { run, metric: answer.metric, type: answer.type, phase: answer.phase,
          client_id: answer.client_id, fetcher: remote, zoom: null };
      }
    }
  }
}

/** Fetches of one metric's series for a zoomed range, shared by the lines of a chart. */
class RemoteMetric {
  constructor(run, metric) {
    this.run = run;
    this.metric = metric;
    this.pending = new Map(); // "x0,x1,width" -> Promise of the answer
  }

  fetch(range, width) {
    const key = `${range[0]},${range[1]},${width}`;
    let request = this.pending.get(key);
    if (!request) {
      request = getJson({ run: this.run, metric: this.metric, x: "step", x0: range[0],
        x1: range[1], width, events: 0 });
      this.pending.clear(); // only the latest range is worth keeping
      this.pending.set(key, request);
    }
    return request;
  }
}

/**
 * Load a big run's history into `model`: events whole, bulk series reduced
 * (`first`: the answer to `firstRequest(run)`, when already in).
 * Resolves once the model holds everything up to the catalogue's `seq`
 * (then `model.lastSeq`), so the WebSocket continues with `since=seq`.
 */
export async function loadReduced(model, run, first = null) {
  const catalogue = first || await getJson({ ...firstRequest(run), if_over: undefined });
  const upto = catalogue.seq;
  for (const event of catalogue.events) model.apply(event);
  for (const answer of catalogue.metrics) {
    const remote = new RemoteMetric(run, answer.metric);
    for (const series of answer.series) {
      if (series.bulk) applySeries(model, run, remote, series);
    }
  }
  model.messages = catalogue.messages;
  model.lastSeq = Math.max(model.lastSeq, upto);
  model.reducedHistory = true;
  return upto;
}

/**
 * The points a remote series shows for a zoomed `range`: the server's answer
 * for that range, plus live points that arrived after it. `{pending: true}`
 * while that answer is on its way (`redraw` is called when it arrives: the
 * chart is drawn once, with it); null when not remote, not zoomed, or when the
 * fetch failed (the chart then draws what the model holds).
 */
export function remotePoints(series, range, width, redraw) {
  const remote = series.remote;
  if (!remote || !range) return null;
  const zoom = remote.zoom;
  if (zoom && zoom.range[0] === range[0] && zoom.range[1] === range[1]) {
    if (zoom.failed) return null;
    const x = zoom.x.slice();
    const y = zoom.y.slice();
    const last = x.length ? x[x.length - 1] : -Infinity;
    for (let i = 0; i < series.length; i++) { // live points the answer did not have
      const xi = series.xs[i];
      if (xi > last && xi <= range[1]) {
        x.push(xi);
        y.push(Number.isFinite(series.ys[i]) ? series.ys[i] : null);
      }
    }
    return { x, y, text: null };
  }
  const columns = Math.max(100, Math.round(width));
  remote.fetcher.fetch(range, columns).then((answer) => {
    const match = answer.series.find((s) => s.type === remote.type && s.phase === remote.phase
      && s.client_id === remote.client_id);
    remote.zoom = match ? { range, x: match.x, y: match.y } : { range, failed: true };
  }, () => {
    remote.zoom = { range, failed: true }; // the reduced history stays drawn
  }).then(redraw);
  return { pending: true };
}

/** A stand-in for a feed's stream while the history loads (the same small API). */
class PendingStream {
  constructor() {
    this.state = "connecting";
    this.stopped = false;
  }

  kick() {}

  stop() {
    this.stopped = true;
    this.state = "stopped";
  }
}

/**
 * Open a run feed's live stream, loading the history reduced first when the
 * run is big. Returns the stream (a stand-in until the history is in).
 */
export function openFeed(feed) {
  const { store, id } = feed;
  const pending = new PendingStream();
  (async () => {
    let first = null;
    if (!store.list.loaded && feed.live.lastSeq < 0) {
      // The page was opened on this run: ask for its history while the list (which says
      // whether the run is big) is read, not after. A big run answers (a small or missing
      // one is 204: no store built, no 404 logged), and needs not wait for the list.
      const params = firstRequest(id);
      first = await getJson(params, takeEarly(params)).catch(() => null);
    }
    if (!first && !store.list.loaded) {
      try { await (store.list.loading || store.list.load()); } catch { /* list retried later */ }
    }
    if (pending.stopped) return;
    if ((first || wantsReduced(store.list.runs.get(id))) && feed.live.lastSeq < 0) {
      try {
        await loadReduced(feed.live, id, first);
      } catch {
        feed.live.reset(); // fall back to streaming every line
      }
      if (pending.stopped) return;
      store.changed();
    }
    feed.stream = feed.openLive();
  })();
  return pending;
}
