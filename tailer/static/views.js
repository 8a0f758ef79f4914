//# allFunctionsCalledOnLoad
// (V8: compile this module whole off the main thread as it loads; docs/DESIGN.md §9.)
// Views: the DOM of the runs list, the connection pill and one run's page.
//
// Views read the store and draw; user actions call the store. They hold only
// what drawing needs (the list's <li> nodes, how much of the timeline is shown).

import { ChartBoard, PALETTE, fullPlotly, purgePlot } from "./charts.js";
import { routeHash } from "./store.js";

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

/** A duration in words: "3 h", "12 min". */
export function duration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

const STALE_AFTER_S = 15 * 60;

/** The status to show: a "running" run silent for long reads "no update for 3 h" (DESIGN §7). */
export function shownStatus(entry, now = Date.now()) {
  const status = entry ? entry.status : "unknown";
  if (status !== "running" && status !== "unknown") return { status, text: status };
  if (!entry || typeof entry.stale !== "number") return { status, text: status };
  const stale = entry.stale + (now - (entry.staleAt || now)) / 1000;
  if (stale < STALE_AFTER_S) return { status, text: status };
  return { status: "stale", text: `no update for ${duration(stale)}` };
}

/** The list's entries with a run's rank files folded into one (DESIGN §10). */
export function groupRuns(runs) {
  const groups = new Map();
  for (const r of runs.values()) {
    const key = r.run || r.id;
    const g = groups.get(key);
    if (!g) {
      groups.set(key, { ...r, id: key, files: [r.id], ranks: r.rank == null ? 0 : 1 });
      continue;
    }
    g.files.push(r.id);
    g.ranks += r.rank == null ? 0 : 1;
    g.messages = (g.messages || 0) + (r.messages || 0);
    if ((r.rank ?? Infinity) < (g.rank ?? Infinity)) { g.status = r.status; g.rank = r.rank; g.error = r.error; }
    if (r.status === "failed") { g.status = "failed"; g.error = r.error; }
    if (!g.firstTimestamp || (r.firstTimestamp && r.firstTimestamp < g.firstTimestamp)) g.firstTimestamp = r.firstTimestamp;
    if (!g.lastTimestamp || (r.lastTimestamp && r.lastTimestamp > g.lastTimestamp)) {
      g.lastTimestamp = r.lastTimestamp;
      g.stale = r.stale;
      g.staleAt = r.staleAt;
    }
  }
  return groups;
}

/**
 * Whether a run matches the filter text: every word must match its id, its
 * status, or (written key=value) one of its hyperparameters.
 */
export function matchesFilter(run, text, hparamsOf) {
  const words = text.trim().toLowerCase().split(/\s+/).filter(Boolean);
  return words.every((word) => {
    const eq = word.indexOf("=");
    if (eq > 0) {
      const key = word.slice(0, eq);
      const want = word.slice(eq + 1);
      return run.files.some((file) => {
        const hp = hparamsOf(file) || {};
        return Object.entries(hp).some(([k, v]) => {
          if (k.toLowerCase() !== key && !k.toLowerCase().endsWith(`.${key}`)) return false;
          const got = String(v).toLowerCase();
          return got === want || (want !== "" && Number(want) === Number(v));
        });
      });
    }
    return run.id.toLowerCase().includes(word) || String(run.status).toLowerCase() === word;
  });
}

export class ListView {
  constructor(store) {
    this.store = store;
    this.items = new Map(); // run id -> <li>
    this.sortValues = new Map(); // run id -> last value of the sort metric
    this.sortMetric = null;
  }

  /** Read the last value of `metric` for every run (GET /api/metrics), to sort by it. */
  async loadSortMetric(metric) {
    this.sortMetric = metric;
    this.sortValues = new Map();
    if (!metric) return;
    try {
      const url = `/api/metrics?metric=${encodeURIComponent(metric)}&format=json`;
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok || this.sortMetric !== metric) return;
      const rows = await response.json();
      const values = new Map();
      for (const row of rows) {
        const listed = this.store.list.runs.get(row.experiment_id);
        const run = listed ? listed.run : row.experiment_id;
        if (typeof row.value === "number") values.set(run, row.value);
      }
      this.sortValues = values;
      this.store.changed(true);
    } catch {
      // the list keeps its order
    }
  }

  sorted(groups) {
    const by = $("#runs-sort").value;
    const time = (ts) => parseTime(ts) || 0;
    return [...groups.values()].sort((a, b) => {
      if (by === "name") return a.id.localeCompare(b.id);
      if (by === "started") return time(b.firstTimestamp) - time(a.firstTimestamp) || a.id.localeCompare(b.id);
      if (by === "metric") {
        const va = this.sortValues.get(a.id), vb = this.sortValues.get(b.id);
        const ha = Number.isFinite(va), hb = Number.isFinite(vb);
        if (ha !== hb) return ha ? -1 : 1;
        return (ha ? va - vb : 0) || a.id.localeCompare(b.id);
      }
      return time(b.lastTimestamp) - time(a.lastTimestamp) || a.id.localeCompare(b.id);
    });
  }

  render() {
    const store = this.store;
    const { runs, authProblem } = store.list;
    const list = $("#runs");
    const filter = $("#runs-filter").value;
    const groups = groupRuns(runs);
    const current = new Set(store.route.runs);
    const wanted = [];
    for (const run of this.sorted(groups)) {
      if (filter.trim() && !matchesFilter(run, filter, (id) => store.hparams.get(id))) continue;
      let li = this.items.get(run.id);
      if (!li) {
        li = el("li", { class: "run-item" });
        const box = el("input", { type: "checkbox", class: "run-select", "aria-label": `select ${run.id} to compare` });
        box.addEventListener("change", () => {
          if (box.checked) store.selection.add(li.dataset.id);
          else store.selection.delete(li.dataset.id);
          store.changed(true);
        });
        const link = el("a", { class: "run-link", href: `#/runs/${encodeURIComponent(run.id)}` });
        link.append(
          el("span", { class: "run-id" }),
          el("span", { class: "badge" }),
          el("span", { class: "run-sub" }),
          el("span", { class: "run-error" }),
        );
        li.append(box, link);
        this.items.set(run.id, li);
      }
      const box = li.firstChild;
      const link = li.lastChild;
      box.checked = store.selection.has(run.id);
      li.dataset.id = run.id;
      li.dataset.status = run.status;
      link.setAttribute("aria-current", current.has(run.id) ? "page" : "false");
      $(".run-id", link).textContent = run.id;
      const shown = shownStatus(run);
      const badge = $(".badge", link);
      badge.textContent = shown.text;
      badge.className = `badge status-${shown.status}`;
      const sub = $(".run-sub", link);
      const count = `${(run.messages || 0).toLocaleString()} message${run.messages === 1 ? "" : "s"}`;
      const ranks = run.ranks > 1 ? ` · ${run.ranks} ranks` : "";
      const value = $("#runs-sort").value === "metric" && this.sortValues.has(run.id)
        ? ` · ${this.sortMetric} ${this.sortValues.get(run.id).toPrecision(4)}` : "";
      sub.textContent = `${count}${ranks} · updated ${relativeTime(run.lastTimestamp)}${value}`;
      sub.title = absoluteTime(run.lastTimestamp);
      const err = $(".run-error", link);
      err.textContent = run.status === "failed" && run.error ? run.error : "";
      err.title = err.textContent;
      wanted.push(li);
    }
    for (const [id, li] of this.items) {
      if (!groups.has(id)) { li.remove(); this.items.delete(id); store.selection.delete(id); }
    }
    // Reorder in place so a focused link keeps its focus.
    wanted.forEach((li, i) => {
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    });
    while (list.children.length > wanted.length) list.lastChild.remove();
    const n = store.selection.size;
    const compare = $("#compare-open");
    compare.disabled = n < 1;
    compare.textContent = n ? `Compare selected (${n})` : "Compare selected";
    $("#runs-count").textContent = groups.size ? `(${groups.size})` : "";
    const byStatus = {};
    for (const run of groups.values()) {
      // Counted as the list shows it: a "running" run silent for long is "silent" (DESIGN §7).
      const status = shownStatus(run).status === "stale" ? "silent" : run.status;
      byStatus[status] = (byStatus[status] || 0) + 1;
    }
    $("#welcome-title").textContent = groups.size ? "Pick a run, or tick several to compare" : "Waiting for runs";
    $("#summary").textContent = groups.size
      ? `${groups.size} run${groups.size === 1 ? "" : "s"}: ` + ["running", "silent", "completed", "failed", "unknown"]
        .filter((status) => byStatus[status]).map((status) => `${byStatus[status]} ${status}`).join(", ")
      : "";
    $("#runs-empty").hidden = groups.size > 0 || authProblem;
  }
}

// ------------------------------------------------------------------ hyperparameters

/** {columns, differing} of runs' hparams: a column per key, those that differ first. */
export function hparamColumns(rows) {
  const keys = [];
  const seen = new Set();
  for (const row of rows) for (const key of Object.keys(row.hparams || {})) {
    if (!seen.has(key)) { seen.add(key); keys.push(key); }
  }
  const text = (v) => (v === undefined ? "" : JSON.stringify(v));
  const differing = new Set(keys.filter((key) => new Set(rows.map((r) => text((r.hparams || {})[key]))).size > 1));
  const columns = [...keys.filter((k) => differing.has(k)), ...keys.filter((k) => !differing.has(k))];
  return { columns, differing };
}

/** The last finite value of a run's metric: its val line, else any line. */
export function finalValue(model, chartId) {
  const chart = model.charts.get(chartId);
  if (!chart) return null;
  const lines = [...chart.traces.values()];
  const pick = lines.find((s) => s.phase === "val") || lines.find((s) => s.granularity === "epoch") || lines[0];
  if (!pick) return null;
  for (let i = pick.values.length - 1; i >= 0; i--) {
    if (pick.values[i] !== null && Number.isFinite(pick.values[i])) return pick.values[i];
  }
  return null;
}

// ------------------------------------------------------------------ a run, or runs compared

export class RunView {
  constructor(store) {
    this.store = store;
    this.board = new ChartBoard($("#charts"));
    this.bound = null; // what the board shows: [feedsVersion, models...]
    this.options = null;
    this.renderedTimeline = { model: null, resets: -1, count: 0, dropped: 0 };
    this.hparamsAt = 0;
    this.sortKey = null; // hparams table: sorted by this column (or the final metric)
    this.sortDesc = false;
    $("#run").hidden = false;
    $("#welcome").hidden = true;
  }

  destroy() {
    clearTimeout(this.hparamsTimer);
    this.board.clear();
    purgePlot($("#parallel"));
    $("#parallel").replaceChildren();
  }

  get compare() {
    return this.store.route.view === "compare";
  }

  /** The feed whose header, replay and timeline a single-run page shows. */
  get feed() {
    const members = this.store.members();
    return members.length ? members[0].feed : null;
  }

  /** Draw what changed; returns true while a chart redraw is still owed. */
  flush() {
    const store = this.store;
    const members = store.members();
    const key = [store.feedsVersion, ...members.map((m) => m.feed.model)];
    if (!this.bound || key.length !== this.bound.length || key.some((k, i) => k !== this.bound[i])) {
      this.bound = key;
      const runs = store.route.runs;
      this.board.bind(members.map((m) => ({
        model: m.feed.model,
        run: m.run,
        rank: m.rank,
        label: m.rank != null ? (runs.length > 1 ? `${m.run} rank ${m.rank}` : `rank ${m.rank}`) : m.run,
        colour: runs.length > 1 ? runs.indexOf(m.run) : undefined,
      })));
      this.options = null;
      this.renderedTimeline.resets = -1;
      this.renderMeta();
    }
    const options = store.route.options;
    if (!this.options || JSON.stringify(this.options) !== JSON.stringify(options)) {
      this.options = { ...options };
      let filter = null;
      let invalid = false;
      if (options.filter) {
        try {
          filter = new RegExp(options.filter, "i");
        } catch {
          invalid = true; // read as plain text until it is a valid pattern
          filter = new RegExp(options.filter.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "i");
        }
      }
      $("#opt-filter").setAttribute("aria-invalid", invalid ? "true" : "false");
      this.board.setOptions({ x: options.x, smooth: options.smooth, logy: options.logy, filter });
      this.syncControls(options);
    }
    const owed = window.Plotly ? this.board.flush() : false; // charts wait for plotly
    if (this.parallelOwed && window.Plotly && this.compare) this.renderHparamsTable(members);
    if (members.some((m) => m.feed.model.metaDirty || m.feed.live.metaDirty)) this.renderMeta();
    return owed;
  }

  /** The controls show the route's options (the URL is the truth). */
  syncControls(options) {
    if ($("#opt-x").value !== options.x) $("#opt-x").value = options.x;
    if (Number($("#opt-smooth").value) !== options.smooth) $("#opt-smooth").value = String(options.smooth);
    $("#opt-smooth-value").textContent = String(options.smooth);
    $("#opt-logy").checked = options.logy;
    if (document.activeElement !== $("#opt-filter")) $("#opt-filter").value = options.filter;
  }

  renderMeta() {
    const store = this.store;
    const members = store.members();
    for (const m of members) { m.feed.model.metaDirty = false; m.feed.live.metaDirty = false; }
    $("#run").dataset.mode = this.compare ? "compare" : "run";
    const route = store.route;
    const noCharts = $("#no-charts");
    const anyCharts = members.some((m) => m.feed.model.charts.size > 0);
    noCharts.hidden = anyCharts && !route.invalid.length;
    if (route.invalid.length) {
      noCharts.hidden = false;
      noCharts.textContent = `“${route.invalid.join("”, “")}” is not a valid run id: an id is 1 to 128 letters, digits, “.”, “_” or “-”, starting with a letter or digit.`;
    }
    if (this.compare) this.renderCompare(members);
    else this.renderRun(members);
  }

  renderCompare(members) {
    const store = this.store;
    const runs = store.route.runs;
    $("#run-title").textContent = `Comparing ${runs.length} run${runs.length === 1 ? "" : "s"}`;
    const messages = members.reduce((n, m) => n + m.feed.model.messages, 0);
    $("#run-meta").textContent = `${messages.toLocaleString()} messages`;
    const legend = $("#compare-runs");
    legend.replaceChildren();
    runs.forEach((run, i) => {
      const listed = groupRuns(store.list.runs).get(run);
      const shown = shownStatus(listed);
      const others = runs.filter((r) => r !== run);
      const remove = el("a", {
        class: "remove", href: routeHash({ ...store.route, runs: others, view: others.length ? "compare" : "list" }),
        "aria-label": `remove ${run} from the comparison`, text: "×",
      });
      legend.append(el("li", { "data-run": run },
        el("span", { class: "swatch", style: `background:${PALETTE[i % PALETTE.length]}`, "aria-hidden": "true" }),
        el("a", { href: `#/runs/${encodeURIComponent(run)}`, text: run }),
        el("span", { class: `badge status-${shown.status}`, text: shown.text }),
        remove));
    });
    if (!hasCharts(members) && !store.route.invalid.length) {
      $("#no-charts").textContent = runs.length ? "Loading…" : "Tick runs in the list to compare them.";
    }
    // The table and its chart are redrawn at most once a second while runs stream in.
    const wait = this.hparamsAt + 500 - Date.now();
    if (wait <= 0) {
      this.hparamsAt = Date.now();
      this.renderHparamsTable(members);
    } else if (!this.hparamsTimer) {
      this.hparamsTimer = setTimeout(() => {
        this.hparamsTimer = null;
        this.hparamsAt = Date.now();
        if (this.compare) this.renderHparamsTable(this.store.members());
      }, wait);
    }
  }

  renderRun(members) {
    const store = this.store;
    const feed = this.feed;
    const id = store.route.id;
    $("#run-title").textContent = id;
    $("#compare-hparams").hidden = true;
    if (!feed) {
      $("#run-status").textContent = "invalid";
      $("#run-status").className = "badge status-failed";
      $("#run-meta").textContent = "";
      return;
    }
    const live = feed.live;
    const model = feed.model;
    const grouped = groupRuns(store.list.runs).get(id);
    const listedStatus = shownStatus(grouped);
    const status = live.messages && !(listedStatus.status === "stale" && live.status === "running")
      ? live.status : listedStatus.status;
    const badge = $("#run-status");
    badge.textContent = status === "stale" ? listedStatus.text : status;
    badge.className = `badge status-${status}`;
    const messages = members.reduce((n, m) => n + m.feed.model.messages, 0);
    const parts = [`${messages.toLocaleString()} messages`];
    if (members.length > 1) parts.push(`${members.length} ranks`);
    if (model.lastTimestamp) parts.push(`last update ${absoluteTime(model.lastTimestamp)}`);
    const epoch = model.epochLabel();
    if (epoch) parts.push(epoch);
    const p = model.progress;
    if (p.round != null) parts.push(`round ${p.round}${p.totalRounds != null ? `/${p.totalRounds}` : ""}`);
    if (model.attempt) parts.push(`attempt ${model.attempt + 1}`);
    if (model.mode) parts.push(model.mode.is_federated ? "federated" : "centralized");
    $("#run-meta").textContent = parts.join(" · ");

    // Replay controls (a run of one file).
    const finished = status === "completed" || status === "failed";
    const replay = feed.replay;
    $("#replay-play").disabled = (!finished && !replay) || members.length > 1;
    $("#replay-play").title = finished ? "" : "replay is for finished runs";
    $("#replay-play").textContent = replay ? "Restart" : "Replay";
    const over = replay && (replay.state === "finished" || replay.state === "failed");
    $("#replay-pause").disabled = !replay || over;
    $("#replay-pause").textContent = replay && replay.paused ? "Resume" : "Pause";
    $("#replay-pause").setAttribute("aria-pressed", replay && replay.paused ? "true" : "false");
    $("#replay-stop").disabled = !replay;
    $("#replay-stop").textContent = over ? "Back to live" : "Stop";
    $("#replay-state").textContent = replay
      ? `replay ${replay.state}${replay.problem ? `: ${replay.problem}` : ""}${replay.paused && replay.buffer.length ? ` (${replay.buffer.length} buffered)` : ""} · ${replay.speed === 0 ? "max" : `${replay.speed}×`}`
      : "";
    $("#run").dataset.replay = replay ? replay.state : "off";

    // The failure, up top.
    const listed = store.list.runs.get(feed.id);
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

    if (!hasCharts(members)) {
      $("#no-charts").textContent = model.messages
        ? "No metrics in this run yet."
        : feed.stream.state === "waiting" || (store.list.loaded && !store.list.runs.has(feed.id))
          ? `There is no run “${id}” in this directory (yet). It opens here as soon as its file appears.`
          : "Loading…";
    }
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

  /** The compare view's hyperparameters: a table and a parallel-coordinates chart. */
  renderHparamsTable(members) {
    const store = this.store;
    const section = $("#compare-hparams");
    const runs = store.route.runs;
    const rows = runs.map((run) => {
      const member = members.find((m) => m.run === run);
      return { run, model: member ? member.feed.model : null, hparams: member ? member.feed.model.hparams || {} : {} };
    });
    section.hidden = runs.length === 0;
    // The final-metric choices: every chart of the "metrics" section any run has.
    const metricIds = new Set();
    for (const row of rows) if (row.model) for (const [id, c] of row.model.charts) if (c.section === "metrics") metricIds.add(id);
    const select = $("#hparams-metric");
    const choices = [...metricIds].sort();
    const current = select.value;
    if (select.options.length !== choices.length || choices.some((c, i) => select.options[i].value !== c)) {
      select.replaceChildren(...choices.map((id) => el("option", { value: id, text: id.replace(/^metrics:/, "") })));
      const preferred = choices.find((c) => c === current) || choices.find((c) => /loss/.test(c)) || choices[0];
      if (preferred) select.value = preferred;
    }
    const metricId = select.value || null;
    const metricName = metricId ? metricId.replace(/^metrics:/, "") : null;
    for (const row of rows) row.final = row.model && metricId ? finalValue(row.model, metricId) : null;
    const { columns, differing } = hparamColumns(rows);
    const sortKey = this.sortKey ?? (metricId ? "__final__" : null);
    if (sortKey) {
      const get = (row) => (sortKey === "__final__" ? row.final : row.hparams[sortKey]);
      rows.sort((a, b) => {
        const va = get(a), vb = get(b);
        if (va == null || vb == null) return (va == null) - (vb == null);
        const c = typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb));
        return this.sortDesc ? -c : c;
      });
    }
    const table = $("table[data-hparams]");
    const header = (key, label, differs) => {
      const sorted = sortKey === key;
      const button = el("button", { type: "button", text: `${differs ? "● " : ""}${label}${sorted ? (this.sortDesc ? " ▼" : " ▲") : ""}` });
      button.addEventListener("click", () => {
        if (this.sortKey === key || (this.sortKey === null && key === "__final__")) this.sortDesc = !this.sortDesc;
        else { this.sortKey = key; this.sortDesc = false; }
        this.renderHparamsTable(this.store.members());
      });
      return el("th", {
        scope: "col", class: differs ? "differs" : null, "data-key": key,
        "data-differs": differs ? "true" : null,
        "aria-sort": sorted ? (this.sortDesc ? "descending" : "ascending") : null,
      }, button);
    };
    $("thead", table).replaceChildren(el("tr", {},
      el("th", { scope: "col", text: "run" }),
      ...(metricName ? [header("__final__", `final ${metricName}`, false)] : []),
      ...columns.map((key) => header(key, key, differing.has(key)))));
    $("tbody", table).replaceChildren(...rows.map((row) => el("tr", { "data-run": row.run },
      el("th", { scope: "row" }, el("span", { class: "swatch", style: `background:${PALETTE[runs.indexOf(row.run) % PALETTE.length]}`, "aria-hidden": "true" }), ` ${row.run}`),
      ...(metricName ? [el("td", { "data-key": "__final__", text: row.final == null ? "" : row.final.toPrecision(5) })] : []),
      ...columns.map((key) => {
        const v = row.hparams[key];
        return el("td", { "data-key": key, class: differing.has(key) ? "differs" : null, text: v === undefined ? "" : String(v) });
      }))));
    this.renderParallel(rows, columns, differing, metricName);
  }

  renderParallel(rows, columns, differing, metricName) {
    const target = $("#parallel");
    this.parallelOwed = !window.Plotly; // drawn once plotly has loaded
    if (!window.Plotly || rows.length < 2) {
      if (target.data) purgePlot(target);
      return;
    }
    const dims = [];
    const keys = columns.filter((k) => differing.has(k));
    for (const key of keys.length ? keys : columns.slice(0, 6)) {
      const values = rows.map((r) => r.hparams[key]);
      if (values.every((v) => typeof v === "number")) {
        dims.push({ label: key, values });
      } else {
        const labels = [...new Set(values.map((v) => (v === undefined ? "—" : String(v))))];
        dims.push({ label: key, values: values.map((v) => labels.indexOf(v === undefined ? "—" : String(v))),
          tickvals: labels.map((_, i) => i), ticktext: labels });
      }
    }
    const finals = rows.map((r) => (r.final == null ? NaN : r.final));
    if (metricName) dims.push({ label: `final ${metricName}`, values: finals });
    if (!dims.length) return;
    const fg = getComputedStyle(document.documentElement).getPropertyValue("--fg").trim();
    const finite = finals.filter(Number.isFinite);
    const trace = {
      type: "parcoords",
      meta: { metric: metricName, runs: rows.map((r) => r.run) },
      line: finite.length
        ? { color: finals.map((v) => (Number.isFinite(v) ? v : Math.min(...finite))), colorscale: "Viridis", showscale: true }
        : { color: PALETTE[0] },
      dimensions: dims,
    };
    const layout = {
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: fg, size: 12 }, height: 300, margin: { l: 60, r: 60, t: 40, b: 20 },
      // Room for every axis: a narrow screen scrolls the chart sideways instead of cutting it.
      width: Math.max(target.clientWidth || 600, 130 * dims.length + 140),
    };
    const config = { displaylogo: false, displayModeBar: false };
    fullPlotly().then((plotly) => {
      if (target.isConnected && this.compare) plotly.react(target, [trace], layout, config);
    }).catch(() => { this.parallelOwed = true; }); // tried again at the next render
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

function hasCharts(members) {
  return members.some((m) => m.feed.model.charts.size > 0);
}
