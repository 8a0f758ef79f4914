// Plotly glue: one plot per model chart, updated in place as points arrive.
//
// Small series are extended with Plotly.extendTraces (only the new points go
// to Plotly). Once a line is longer than RAW_LIMIT points the plot shows a
// min/max thinned copy (about two points per pixel column) redrawn at most
// every HEAVY_INTERVAL_MS; the model keeps every point, and zooming in thins
// only the visible range again, so detail is never lost.

import { SECTIONS } from "./model.js";
import { seriesPoints } from "./series-data.js";

const RAW_LIMIT = 4000;
const HEAVY_INTERVAL_MS = 400;
const FRAME_BUDGET_MS = 24;
const MARKER_SECTIONS = new Set(["epoch", "round", "client"]);

const PHASE_COLOURS = {
  train: 0, val: 1, test: 2,
  fit: 0, "fit train": 0, "fit val": 1, "fit test": 2,
  eval: 4, "eval val": 4, "eval test": 6, server: 3, "server test": 3, "server val": 7,
  total_norm: 0, max_norm: 1, min_norm: 2,
};
// Readable on both the light and the dark background.
const PALETTE = [
  "#3b82f6", "#f97316", "#16a34a", "#a855f7", "#e11d48",
  "#0891b2", "#ca8a04", "#db2777", "#65a30d", "#64748b",
];

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

class ChartState {
  constructor(chart, card, plotEl, note) {
    this.chart = chart;
    this.card = card;
    this.plotEl = plotEl;
    this.note = note;
    this.plotted = false;
    this.names = []; // trace names in Plotly's order
    this.drawn = new Map(); // name -> points handed to Plotly (raw mode)
    this.thinned = false;
    this.range = null; // visible x range after a zoom, or null for all
    this.lastHeavy = 0;
  }
}

export class ChartBoard {
  constructor(container) {
    this.container = container;
    this.states = new Map();
    this.sections = new Map();
    this.model = null;
    this.deferred = new Set(); // thinned charts waiting for their next redraw slot
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

  /** Show `model`, dropping every plot of the previous one. */
  bind(model) {
    this.clear();
    this.model = model;
    this.modelResets = model.resets;
    for (const id of model.charts.keys()) model.dirtyCharts.add(id);
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
    this.container.replaceChildren();
  }

  /** Draw what changed since the last call; returns true while a redraw is still owed. */
  flush(now = performance.now()) {
    const model = this.model;
    if (!model) return false;
    if (model.resets !== this.modelResets) this.bind(model);
    // Charts that waited go first, so with many charts each gets its turn.
    const ids = new Set([...this.deferred, ...model.dirtyCharts]);
    model.dirtyCharts.clear();
    this.deferred.clear();
    // Each Plotly update redraws that plot; when a frame's budget is spent the
    // remaining charts wait for the next frame and then take all their new
    // points in one update, so a fast run never freezes the page.
    const deadline = performance.now() + FRAME_BUDGET_MS;
    for (const id of ids) {
      const chart = model.charts.get(id);
      if (!chart) continue;
      if (performance.now() > deadline) {
        this.deferred.add(id);
        continue;
      }
      this.update(chart, now);
    }
    return this.deferred.size > 0;
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

  stateFor(chart) {
    let state = this.states.get(chart.id);
    if (state) return state;
    const card = document.createElement("figure");
    card.className = "chart-card";
    card.dataset.chartId = chart.id;
    const caption = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "chart-title";
    title.textContent = chart.title;
    const note = document.createElement("span");
    note.className = "chart-note";
    caption.append(title, note);
    const plotEl = document.createElement("div");
    plotEl.className = "plot";
    plotEl.setAttribute("role", "img");
    plotEl.setAttribute("aria-label", `${chart.title} over ${chart.xTitle}`);
    card.append(caption, plotEl);
    this.sectionGrid(chart.section).append(card);
    state = new ChartState(chart, card, plotEl, note);
    this.states.set(chart.id, state);
    return state;
  }

  traceFor(state, series, index) {
    const width = Math.max(200, state.plotEl.clientWidth || 600);
    const redraw = () => { if (this.states.get(state.chart.id) === state) this.redraw(state); };
    const shown = seriesPoints(series, { range: state.range, width, thinned: state.thinned, redraw });
    const colourIndex = PHASE_COLOURS[series.name] ?? index;
    // Markers where points are few or each one matters (a lone test value, epochs, rounds).
    const markers = MARKER_SECTIONS.has(state.chart.section) || series.length <= 30;
    const trace = {
      type: "scatter",
      mode: markers ? "lines+markers" : "lines",
      name: series.name,
      x: shown.x,
      y: shown.y,
      connectgaps: false,
      line: { color: PALETTE[colourIndex % PALETTE.length], width: 1.6 },
      marker: { size: 5 },
      hovertemplate: shown.text ? "%{y:.5g}<br>%{text}<extra>%{fullData.name}</extra>"
        : "%{y:.5g}<extra>%{fullData.name}</extra>",
    };
    if (shown.text) trace.text = shown.text;
    return trace;
  }

  /** Whole-number axes (epochs, rounds) with a short span get a tick per step, never 1.5. */
  unitTicks(state) {
    if (!MARKER_SECTIONS.has(state.chart.section)) return false;
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of state.chart.traces.values()) {
      for (const x of s.xs) {
        if (!Number.isInteger(x)) return false;
        if (x < lo) lo = x;
        if (x > hi) hi = x;
      }
    }
    return hi - lo <= 12;
  }

  layoutFor(state) {
    const chart = state.chart;
    // A legend when there are several lines, or one whose name says more than the title.
    const names = [...chart.traces.keys()];
    const legend = names.length > 1 || (names.length === 1 && names[0] !== chart.title);
    state.unit = this.unitTicks(state);
    const ticks = state.unit ? { tickmode: "linear", tick0: 0, dtick: 1 } : { tickmode: "auto" };
    return {
      ...nested(themeLayout()),
      height: 250,
      autosize: true,
      margin: { l: 52, r: 12, t: legend ? 28 : 8, b: 40 },
      xaxis: { ...nested(themeLayout()).xaxis, ...ticks, title: { text: chart.xTitle, standoff: 6 }, automargin: true },
      yaxis: { ...nested(themeLayout()).yaxis, automargin: true },
      showlegend: legend,
      legend: { ...nested(themeLayout()).legend, orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      hovermode: "x unified",
      uirevision: chart.id,
    };
  }

  redraw(state) {
    const chart = state.chart;
    state.names = [...chart.traces.keys()];
    const data = state.names.map((name, i) => this.traceFor(state, chart.traces.get(name), i));
    const config = {
      responsive: true,
      displaylogo: false,
      modeBarButtonsToRemove: ["lasso2d", "select2d"],
      toImageButtonOptions: { filename: `${this.model.id}-${chart.title}`.replace(/[^\w.-]+/g, "_") },
    };
    if (!state.plotted) {
      window.Plotly.newPlot(state.plotEl, data, this.layoutFor(state), config);
      state.plotted = true;
      this.observer.observe(state.plotEl);
      state.plotEl.on("plotly_relayout", (event) => this.onRelayout(state, event));
    } else {
      window.Plotly.react(state.plotEl, data, this.layoutFor(state), config);
    }
    for (const name of state.names) state.drawn.set(name, chart.traces.get(name).length);
  }

  onRelayout(state, event) {
    if (!event) return;
    let range;
    if (event["xaxis.autorange"] === true) range = null;
    else if (event["xaxis.range[0]"] !== undefined) {
      range = [Number(event["xaxis.range[0]"]), Number(event["xaxis.range[1]"])];
    } else if (Array.isArray(event["xaxis.range"])) range = event["xaxis.range"].map(Number);
    else return;
    state.range = range;
    // Lines of a big run (reduced.js) ask the server for the new range.
    const remote = [...state.chart.traces.values()].some((s) => s.remote);
    if (state.thinned || remote) this.redraw(state);
  }

  update(chart, now) {
    const state = this.stateFor(chart);
    let longest = 0;
    let nonFinite = 0;
    for (const s of chart.traces.values()) {
      longest = Math.max(longest, s.length);
      nonFinite += s.nonFinite;
    }
    state.note.textContent = nonFinite ? `${nonFinite} non-finite value${nonFinite > 1 ? "s" : ""} (gaps)` : "";
    const thinned = longest > RAW_LIMIT;
    if (!state.plotted || thinned !== state.thinned || chart.traces.size !== state.names.length) {
      state.thinned = thinned;
      state.lastHeavy = now;
      this.redraw(state);
      return;
    }
    if (thinned) {
      // A thinned redraw costs tens of milliseconds: keep them to at most about a
      // fifth of the main thread, so a burst of history never starves the page.
      const wait = Math.max(HEAVY_INTERVAL_MS, 5 * (state.heavyCost || 0));
      if (now - state.lastHeavy < wait) {
        this.deferred.add(chart.id);
        return;
      }
      state.lastHeavy = now;
      const started = performance.now();
      this.redraw(state);
      state.heavyCost = performance.now() - started;
      return;
    }
    // Raw mode: hand Plotly only the new points (lines with hover text apart,
    // since extendTraces can only extend attributes every listed trace has).
    const withText = { indices: [], x: [], y: [], text: [] };
    const plain = { indices: [], x: [], y: [] };
    const plotted = state.plotEl.data || [];
    if (state.names.some((name, i) => !!chart.traces.get(name).text !== Array.isArray(plotted[i]?.text))) {
      this.redraw(state); // a line gained hover text after it was first drawn
      return;
    }
    state.names.forEach((name, i) => {
      const series = chart.traces.get(name);
      const from = state.drawn.get(name) || 0;
      if (series.length <= from) return;
      const group = series.text ? withText : plain;
      group.indices.push(i);
      group.x.push(series.xs.slice(from));
      group.y.push(series.ys.slice(from).map((y) => (Number.isFinite(y) ? y : null)));
      if (series.text) group.text.push(series.text.slice(from));
      state.drawn.set(name, series.length);
    });
    if (plain.indices.length) {
      window.Plotly.extendTraces(state.plotEl, { x: plain.x, y: plain.y }, plain.indices);
    }
    if (withText.indices.length) {
      window.Plotly.extendTraces(state.plotEl,
        { x: withText.x, y: withText.y, text: withText.text }, withText.indices);
    }
    if (state.unit && !this.unitTicks(state)) {
      state.unit = false;
      window.Plotly.relayout(state.plotEl, { "xaxis.tickmode": "auto" });
    }
  }

  applyTheme() {
    const flat = themeLayout();
    for (const state of this.states.values()) {
      if (state.plotted) window.Plotly.relayout(state.plotEl, flat);
    }
  }

  /** What the test hook reports: per chart, points in the model and points drawn. */
  describe() {
    const out = {};
    for (const [id, state] of this.states) {
      const traces = {};
      const plotted = state.plotEl.data || [];
      state.names.forEach((name, i) => {
        const series = state.chart.traces.get(name);
        traces[name] = {
          points: series.length,
          drawn: plotted[i] ? plotted[i].x.length : 0,
          nonFinite: series.nonFinite,
        };
      });
      out[id] = { title: state.chart.title, section: state.chart.section, thinned: state.thinned, traces };
    }
    return out;
  }
}
