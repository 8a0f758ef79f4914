//# allFunctionsCalledOnLoad
// (V8: compile this module whole off the main thread as it loads; docs/DESIGN.md §9.)
// Plotly glue: one plot per metric, with the lines of every run shown.
//
// A board shows "members" (a run's model each: one run, its ranks, or the
// runs compared) under one set of options (x axis, smoothing, log-y, a metric
// filter). A chart is redrawn with Plotly.react when its data changed, at most
// once a frame, and a long (thinned) chart at most every HEAVY_INTERVAL_MS;
// series-data.js decides which points each line draws.

import { PHASE_ORDER, SECTIONS } from "./model.js";
import { seriesPoints } from "./series-data.js";

const RAW_LIMIT = 4000;
const MARKERS_UP_TO = 200;
const HEAVY_INTERVAL_MS = 400;
const FRAME_BUDGET_MS = 24;
const UNIT_AXES = new Set(["epoch"]);

// Readable on both the light and the dark background.
export const PALETTE = [
  "#3b82f6", "#f97316", "#16a34a", "#a855f7", "#e11d48",
  "#0891b2", "#ca8a04", "#db2777", "#65a30d", "#64748b",
];
const LINE_COLOURS = {
  train: 0, val: 1, test: 2, "train (batch)": 0,
  fit: 0, "fit train": 0, "fit val": 1, "fit test": 2,
  eval: 4, "eval val": 4, "eval test": 6, server: 3, "server test": 3, "server val": 7,
  total_norm: 0, max_norm: 1, min_norm: 2,
};
const DASHES = { train: "solid", val: "dash", test: "dot", predict: "dashdot", eval: "dash", server: "dot" };

/** The dash style of a phase (compare view: colour is the run's, the dash the phase's). */
export function dashFor(phase) {
  if (!phase) return "solid";
  const first = String(phase).split(" ")[0];
  return DASHES[phase] || DASHES[first] || (PHASE_ORDER.includes(phase) ? "solid" : "dashdot");
}

const X_TITLES = { step: "step", epoch: "epoch", time: "seconds since start", wall: "time" };

// Nothing leaves the machine: no cloud or Chart Studio controls, no remote defaults.
const PLOT_CONFIG = {
  responsive: true,
  displaylogo: false,
  showLink: false,
  showSendToCloud: false,
  showEditInChartStudio: false,
  plotlyServerURL: "",
  topojsonURL: "",
  modeBarButtonsToRemove: ["sendDataToCloud", "editInChartStudio", "lasso2d", "select2d"],
};

let full = null;
let fullLoaded = null;

/** Empty a plot drawn by either bundle (the full one, once loaded, handles both). */
export function purgePlot(el) {
  const plotly = fullLoaded || window.Plotly;
  if (plotly) plotly.purge(el);
}

/**
 * plotly's full bundle (`/static/vendor/plotly.min.js`, from the `plotly` package), loaded
 * the first time something needs a trace type the page's basic bundle lacks (parallel
 * coordinates). `window.Plotly` stays the basic bundle, which draws every chart: call this
 * once the basic bundle is in (it is put back when the full one has run).
 */
export function fullPlotly() {
  if (!window.Plotly) return Promise.reject(new Error("plotly's basic bundle is not loaded yet"));
  if (!full) {
    full = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "/static/vendor/plotly.min.js";
      script.onload = () => {
        // The bundle set window.Plotly as it ran; the load event follows in the same task.
        fullLoaded = window.Plotly;
        window.Plotly = basic;
        resolve(fullLoaded);
      };
      script.onerror = () => {
        full = null;
        reject(new Error("could not load /static/vendor/plotly.min.js"));
      };
      const basic = window.Plotly;
      document.head.append(script);
    });
  }
  return full;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function themeLayout() {
  const fg = cssVar("--fg") || "#1f2937";
  const grid = cssVar("--grid") || "#e5e7eb";
  const muted = cssVar("--muted") || "#6b7280";
  return {
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { color: fg, family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12 },
    "xaxis.gridcolor": grid,
    "yaxis.gridcolor": grid,
    "xaxis.zerolinecolor": grid,
    "yaxis.zerolinecolor": grid,
    "xaxis.linecolor": muted,
    "yaxis.linecolor": muted,
    "hoverlabel.bgcolor": cssVar("--card") || "#fff",
    "hoverlabel.font.color": fg,
    "legend.font.color": fg,
  };
}

function nested(flat) {
  // Plotly.newPlot wants nested objects; Plotly.relayout takes the dotted form.
  const out = {};
  for (const [key, value] of Object.entries(flat)) {
    const parts = key.split(".");
    let node = out;
    for (const part of parts.slice(0, -1)) node = node[part] = node[part] || {};
    node[parts[parts.length - 1]] = value;
  }
  return out;
}

/** A y range around a flat line's value (0.001 reads as 0.001, not 0 on -1..1), or null. */
export function flatRange(ys, logy) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const y of ys) {
    if (y === null || !Number.isFinite(y)) continue;
    if (y < lo) lo = y;
    if (y > hi) hi = y;
  }
  // Flat up to rounding (a smoothed constant wobbles in its last bits).
  if (!Number.isFinite(lo) || hi - lo > 1e-9 * Math.max(Math.abs(lo), Math.abs(hi))) return null;
  if (logy) return lo > 0 ? [Math.log10(lo) - 0.1, Math.log10(lo) + 0.1] : null;
  const d = lo === 0 ? 1 : Math.abs(lo) * 0.1;
  return [lo - d, lo + d];
}

/** CSV text of `rows` (arrays); fields quoted where needed. */
export function toCsv(rows) {
  const cell = (v) => {
    if (v === null || v === undefined) return "";
    const s = typeof v === "number" ? (Number.isFinite(v) ? String(v) : String(v)) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return rows.map((row) => row.map(cell).join(",")).join("\n") + "\n";
}

class ChartState {
  constructor(id, section, metric, title, card, plotEl, note) {
    this.id = id;
    this.section = section;
    this.metric = metric;
    this.title = title;
    this.card = card;
    this.plotEl = plotEl;
    this.note = note;
    this.plotted = false;
    this.thinned = false;
    this.range = null; // visible x range after a zoom, or null for all
    this.lastDraw = -Infinity;
    this.cost = 0;
    this.lines = []; // [{member, series}] in Plotly's order (raw traces)
    this.pending = false; // a zoomed line waits for the server's points (reduced.js)
    this.redrawQueued = false;
  }
}

export class ChartBoard {
  constructor(container) {
    this.container = container;
    this.states = new Map();
    this.sections = new Map();
    this.members = [];
    this.options = { x: "step", smooth: 0, logy: false, filter: null };
    this.dirty = new Set(); // chart ids to redraw
    this.deferred = new Set(); // charts waiting for their next redraw slot
    // Plotly sizes a plot when it is drawn and, with `responsive`, on window
    // resizes only; cards also change width when a neighbour arrives in the
    // grid or a panel opens, so each plot follows its own box.
    this.resizing = new Set();
    this.observer = new ResizeObserver((entries) => {
      for (const entry of entries) this.resizing.add(entry.target);
      requestAnimationFrame(() => {
        for (const plotEl of this.resizing) {
          const width = Math.round(plotEl.clientWidth);
          if (plotEl._fullLayout && width && Math.abs(plotEl._fullLayout.width - width) > 1) {
            window.Plotly.Plots.resize(plotEl);
          }
        }
        this.resizing.clear();
      });
    });
  }

  /**
   * Show `members` ([{model, label, run, rank}]), dropping every plot of the
   * previous ones. One member: a colour per line; several: a colour per member.
   */
  bind(members) {
    this.clear();
    this.members = members.map((m, i) => ({ ...m, colour: m.colour ?? i, resets: m.model.resets }));
    for (const m of this.members) for (const id of m.model.charts.keys()) this.dirty.add(id);
  }

  /** New options ({x, smooth, logy, filter}): every chart is drawn again. */
  setOptions(options) {
    const changedAxis = options.x !== this.options.x;
    this.options = { ...this.options, ...options };
    for (const state of this.states.values()) {
      if (changedAxis) state.range = null;
      this.dirty.add(state.id);
    }
    for (const m of this.members) for (const id of m.model.charts.keys()) this.dirty.add(id);
  }

  clear() {
    this.observer.disconnect();
    this.resizing.clear();
    for (const state of this.states.values()) {
      if (state.plotted) window.Plotly.purge(state.plotEl);
    }
    this.states.clear();
    this.sections.clear();
    this.deferred.clear();
    this.dirty.clear();
    this.container.replaceChildren();
  }

  shows(metric) {
    const filter = this.options.filter;
    return !filter || filter.test(metric);
  }

  /** Draw what changed since the last call; returns true while a redraw is still owed. */
  flush(now = performance.now()) {
    if (this.members.some((m) => m.model.resets !== m.resets)) this.bind(this.members);
    for (const m of this.members) {
      for (const id of m.model.dirtyCharts) this.dirty.add(id);
      m.model.dirtyCharts.clear();
    }
    // Charts that waited go first, so with many charts each gets its turn.
    const ids = new Set([...this.deferred, ...this.dirty]);
    this.dirty.clear();
    this.deferred.clear();
    // Every card goes in before any plot is drawn (some wait for a later slot): the grid
    // has its final columns, so no plot is drawn at one width and then redrawn at another
    // when its neighbours arrive.
    const owed = [];
    for (const id of ids) {
      const charts = this.chartsFor(id);
      if (!charts.length) continue;
      const visible = this.shows(charts[0].chart.metric);
      if (!visible && !this.states.has(id)) continue; // drawn once the filter lets it through
      const state = this.stateFor(id, charts[0].chart);
      state.card.hidden = !visible;
      if (visible) owed.push([state, charts]);
    }
    const deadline = performance.now() + FRAME_BUDGET_MS;
    for (const [state, charts] of owed) {
      if (performance.now() > deadline) this.deferred.add(state.id);
      else this.update(state, charts, now);
    }
    this.hideEmptySections();
    return this.deferred.size > 0;
  }

  /** [{member, chart}] of every member that has chart `id`. */
  chartsFor(id) {
    const out = [];
    for (const member of this.members) {
      const chart = member.model.charts.get(id);
      if (chart) out.push({ member, chart });
    }
    return out;
  }

  hideEmptySections() {
    for (const [section, grid] of this.sections) {
      const any = [...grid.children].some((card) => !card.hidden);
      grid.parentElement.hidden = !any;
      grid.parentElement.dataset.section = section;
    }
  }

  sectionGrid(section) {
    let grid = this.sections.get(section);
    if (grid) return grid;
    const order = SECTIONS.map(([key]) => key);
    const title = (SECTIONS.find(([key]) => key === section) || [section, section])[1];
    const el = document.createElement("section");
    el.className = "chart-section";
    el.dataset.section = section;
    const h = document.createElement("h3");
    h.textContent = title;
    grid = document.createElement("div");
    grid.className = "chart-grid";
    el.append(h, grid);
    // Keep sections in their fixed order whatever arrives first.
    const rank = order.indexOf(section);
    const next = [...this.container.children].find(
      (child) => order.indexOf(child.dataset.section) > rank,
    );
    this.container.insertBefore(el, next || null);
    this.sections.set(section, grid);
    return grid;
  }

  stateFor(id, chart) {
    let state = this.states.get(id);
    if (state) return state;
    const card = document.createElement("figure");
    card.className = "chart-card";
    card.dataset.chartId = id;
    const caption = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "chart-title";
    title.textContent = chart.title;
    const note = document.createElement("span");
    note.className = "chart-note";
    const csv = document.createElement("button");
    csv.type = "button";
    csv.className = "chart-csv";
    csv.textContent = "CSV";
    csv.setAttribute("aria-label", `Download ${chart.title} as CSV`);
    caption.append(title, note, csv);
    const plotEl = document.createElement("div");
    plotEl.className = "plot";
    plotEl.dataset.metric = chart.metric;
    plotEl.dataset.section = chart.section;
    plotEl.setAttribute("role", "img");
    card.append(caption, plotEl);
    this.sectionGrid(chart.section).append(card);
    state = new ChartState(id, chart.section, chart.metric, chart.title, card, plotEl, note);
    csv.addEventListener("click", () => this.download(state));
    this.states.set(id, state);
    return state;
  }

  /** The line's name in the legend: the member's label first when there are several. */
  lineName(member, series) {
    return this.members.length > 1 ? `${member.label} ${series.name}` : series.name;
  }

  colourOf(member, series, index) {
    const i = this.members.length > 1 ? member.colour : (LINE_COLOURS[series.name] ?? index);
    return PALETTE[i % PALETTE.length];
  }

  traces(state, charts) {
    const { x: axis, smooth } = this.options;
    const width = Math.max(200, state.plotEl.clientWidth || 600);
    const data = [];
    const lines = [];
    let longest = 0;
    for (const { member, chart } of charts) {
      for (const series of chart.traces.values()) longest = Math.max(longest, series.view(axis).xs.length);
    }
    state.thinned = longest > RAW_LIMIT;
    state.pending = false;
    // A zoomed line of a big run waits for the server's points: when they arrive the
    // chart is drawn once with them (one redraw even when several lines asked).
    const redraw = () => {
      if (state.redrawQueued) return;
      state.redrawQueued = true;
      queueMicrotask(() => {
        state.redrawQueued = false;
        if (this.states.get(state.id) === state) this.draw(state);
      });
    };
    let index = 0;
    for (const { member, chart } of charts) {
      for (const series of chart.traces.values()) {
        const name = this.lineName(member, series);
        const colour = this.colourOf(member, series, index++);
        const meta = { experiment_id: member.model.id, run: member.run ?? member.model.id,
          rank: member.rank ?? null, phase: series.phase, line: series.name, smoothed: false };
        const opts = { axis, range: state.range, width, thinned: state.thinned, redraw };
        const shown = seriesPoints(series, opts);
        if (shown.pending) state.pending = true;
        // Markers while they can be told apart: an SVG marker is an element of its own, so
        // a thousand of them cost more to draw than the rest of the chart.
        const markers = shown.x.length <= (series.granularity === "epoch" ? MARKERS_UP_TO : 30);
        // Per-step values against epochs share each epoch's x: joined, they would zigzag
        // down and back at every epoch, so they are drawn as points only.
        const pointsOnly = axis === "epoch" && series.granularity !== "epoch";
        const raw = {
          type: "scatter",
          mode: pointsOnly ? "markers" : markers ? "lines+markers" : "lines",
          name,
          meta,
          x: shown.x,
          y: shown.y,
          connectgaps: false,
          line: { color: colour, width: series.granularity === "epoch" ? 2 : 1.3, dash: dashFor(series.phase) },
          marker: { size: 5 },
          hovertemplate: shown.text ? "%{y:.5g}<br>%{text}<extra>%{fullData.name}</extra>"
            : "%{y:.5g}<extra>%{fullData.name}</extra>",
        };
        if (shown.text) raw.text = shown.text;
        lines.push({ member, series, index: data.length });
        if (smooth > 0) {
          // The raw line stays, faint; the smoothed one is drawn over it.
          raw.opacity = 0.25;
          raw.showlegend = false;
          raw.hoverinfo = "skip";
          delete raw.hovertemplate;
          raw.legendgroup = name;
          data.push(raw);
          const smoothed = seriesPoints(series, { ...opts, smooth });
          data.push({
            type: "scatter",
            mode: "lines",
            name,
            legendgroup: name,
            meta: { ...meta, smoothed: true },
            x: smoothed.x,
            y: smoothed.y,
            connectgaps: false,
            line: { color: colour, width: series.granularity === "epoch" ? 2.2 : 1.5, dash: dashFor(series.phase) },
            hovertemplate: "%{y:.5g}<extra>%{fullData.name}</extra>",
          });
        } else {
          data.push(raw);
        }
      }
    }
    state.lines = lines;
    return data;
  }

  /** Whole-number axes (epochs, rounds) with a short span get a tick per step, never 1.5. */
  unitTicks(data) {
    if (!UNIT_AXES.has(this.options.x) && this.options.x !== "step") return false;
    let lo = Infinity;
    let hi = -Infinity;
    let n = 0;
    for (const trace of data) {
      for (const x of trace.x) {
        if (!Number.isInteger(x)) return false;
        if (x < lo) lo = x;
        if (x > hi) hi = x;
        n += 1;
      }
    }
    return n > 0 && hi - lo <= 12;
  }

  layoutFor(state, data) {
    const { x: axis, logy } = this.options;
    const names = new Set(data.filter((t) => t.showlegend !== false).map((t) => t.name));
    // Several runs: their colours and the phases' line styles are keyed once, above the
    // charts; a legend per chart would only repeat it.
    const legend = this.members.length <= 1 && (names.size > 1 || (names.size === 1 && !names.has(state.title)));
    const ticks = this.unitTicks(data) ? { tickmode: "linear", tick0: 0, dtick: 1 } : { tickmode: "auto" };
    const theme = nested(themeLayout());
    const yaxis = { ...theme.yaxis, automargin: true, type: logy ? "log" : "linear" };
    const flat = flatRange(data.flatMap((t) => t.y), logy);
    if (flat) { yaxis.range = flat; yaxis.autorange = false; }
    return {
      ...theme,
      height: 250,
      autosize: true,
      // The margins plotly's automargin arrives at for these charts (legend row above, tick
      // labels and title below; its padding is the smallest margin: 12, or 8 without a
      // legend): starting there, the first draw needs no second pass (~50 ms of a first
      // visit's loss chart). Longer labels still grow them, as before.
      margin: { l: 52, r: 12, t: legend ? 44 : 8, b: legend ? 46 : 42 },
      xaxis: {
        ...theme.xaxis, ...ticks, automargin: true,
        type: axis === "wall" ? "date" : "linear",
        title: { text: X_TITLES[axis] || axis, standoff: 6 },
        ...(state.range ? { range: state.range, autorange: false } : {}),
      },
      yaxis,
      showlegend: legend,
      legend: { ...theme.legend, orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      hovermode: "x unified",
      uirevision: `${state.id}|${axis}|${logy}`,
    };
  }

  update(state, charts, now) {
    let nonFinite = 0;
    for (const { chart } of charts) for (const s of chart.traces.values()) nonFinite += s.nonFinite;
    state.note.textContent = nonFinite ? `${nonFinite} non-finite value${nonFinite > 1 ? "s" : ""} (gaps)` : "";
    if (state.plotted && state.thinned) {
      // A thinned redraw costs tens of milliseconds: keep them to at most about a
      // fifth of the main thread, so a burst of history never starves the page.
      const wait = Math.max(HEAVY_INTERVAL_MS, 5 * state.cost);
      if (now - state.lastDraw < wait) {
        this.deferred.add(state.id);
        return;
      }
    }
    const started = performance.now();
    this.draw(state, charts);
    state.cost = performance.now() - started;
    state.lastDraw = now;
  }

  draw(state, charts = this.chartsFor(state.id)) {
    const data = this.traces(state, charts);
    // Plotly already shows the new range (with the points it has); the server's points
    // for it are on their way and draw the chart when they come: one redraw, not two.
    if (state.plotted && state.pending) return;
    const layout = this.layoutFor(state, data);
    state.plotEl.setAttribute("aria-label",
      `${state.title} over ${X_TITLES[this.options.x] || this.options.x}`);
    if (!state.plotted) {
      window.Plotly.newPlot(state.plotEl, data, layout, PLOT_CONFIG);
      state.plotted = true;
      this.observer.observe(state.plotEl);
      state.plotEl.on("plotly_relayout", (event) => this.onRelayout(state, event));
    } else {
      window.Plotly.react(state.plotEl, data, layout, PLOT_CONFIG);
    }
  }

  onRelayout(state, event) {
    if (!event) return;
    let range;
    if (event["xaxis.autorange"] === true) range = null;
    else if (event["xaxis.range[0]"] !== undefined) {
      range = [event["xaxis.range[0]"], event["xaxis.range[1]"]];
    } else if (Array.isArray(event["xaxis.range"])) range = event["xaxis.range"];
    else return;
    if (range && this.options.x !== "wall") range = range.map(Number);
    if (range && this.options.x === "wall") range = range.map((v) => (typeof v === "number" ? v : Date.parse(`${v}Z`)));
    state.range = range;
    // Lines of a big run (reduced.js) ask the server for the new range.
    const remote = this.chartsFor(state.id).some(({ chart }) => [...chart.traces.values()].some((s) => s.remote));
    if (state.thinned || remote) this.draw(state);
  }

  /** Every raw point of a chart as CSV, saved by the browser (nothing is sent anywhere). */
  download(state) {
    const rows = [["experiment_id", "rank", "phase", "line", "step", "epoch", "time", "timestamp", "value"]];
    for (const { member, chart } of this.chartsFor(state.id)) {
      for (const series of chart.traces.values()) {
        for (let i = 0; i < series.length; i++) {
          const y = series.values[i];
          if (y === null) continue; // an attempt's gap, not a value
          const wall = series.x.wall[i];
          rows.push([member.model.id, member.rank ?? "", series.phase ?? "", series.name,
            series.x.step[i], series.x.epoch[i], series.x.time[i],
            wall === null ? "" : new Date(wall).toISOString(), Number.isFinite(y) ? y : String(y)]);
        }
      }
    }
    const blob = new Blob([toCsv(rows)], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `${state.metric.replace(/[^\w.-]+/g, "_")}.csv`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  applyTheme() {
    const flat = themeLayout();
    for (const state of this.states.values()) {
      if (state.plotted) window.Plotly.relayout(state.plotEl, flat);
    }
  }

  /** What the test hook reports: per chart, points in the model and points drawn per line. */
  describe() {
    const out = {};
    for (const [id, state] of this.states) {
      const traces = {};
      const plotted = state.plotEl.data || [];
      for (const { member, series, index } of state.lines) {
        traces[this.lineName(member, series)] = {
          points: series.length,
          drawn: plotted[index] ? plotted[index].x.length : 0,
          nonFinite: series.nonFinite,
          experiment_id: member.model.id,
          phase: series.phase,
        };
      }
      out[id] = {
        title: state.title, metric: state.metric, section: state.section,
        thinned: state.thinned, hidden: state.card.hidden, traces,
      };
    }
    return out;
  }
}
