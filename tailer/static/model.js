//# allFunctionsCalledOnLoad
// (V8: compile this module whole off the main thread as it loads; docs/DESIGN.md §9.)
// The run model: turns the tailer's frames into chartable series and a timeline.
//
// Pure data, no DOM and no Plotly, so it can be reasoned about (and tested) on
// its own. A frame is the recorded message plus `experiment_id` and `seq`.

import schema from "/api/schema" with { type: "json" };

/** Values the recorder writes for non-finite floats. */
const NON_FINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

/**
 * Keys that index a value rather than measure something: recorder.format.INDEX_KEYS,
 * served by the tailer, so the page charts exactly the values replay makes rows of.
 */
const INDEX_KEYS = new Set(schema.index_keys);

const PHASES = ["train", "training", "val", "valid", "validation", "test", "predict"];
const PHASE_ALIASES = { training: "train", valid: "val", validation: "val" };

/** A number for a recorded value: numbers as they are, "NaN"/"Infinity"/"-Infinity" as floats. */
export function toNumber(value) {
  if (typeof value === "number") return value;
  if (typeof value === "string" && Object.prototype.hasOwnProperty.call(NON_FINITE, value)) {
    return NON_FINITE[value];
  }
  return undefined;
}

/** The run status a message announces, as recorder.format.status_of does. */
export function statusOf(message) {
  const kind = message && message.type;
  if (kind === "training_end") return "completed";
  if (kind === "error") return "failed";
  if (kind === "status") {
    const data = message.data;
    const status = data && typeof data === "object" ? data.status : undefined;
    if (status === "completed" || status === "failed" || status === "running") return status;
    if (["started", "starting", "training", "in_progress"].includes(status)) return "running";
    if (["error", "crashed"].includes(status)) return "failed";
    if (["finished", "done", "success"].includes(status)) return "completed";
  }
  if (kind === "training_start" || kind === "epoch_start" || kind === "round_start") return "running";
  return null;
}

/** Split a metric name into (phase, base name) when it carries a phase prefix or suffix. */
export function splitPhase(name, knownPhase) {
  const candidates = knownPhase ? [knownPhase, ...PHASES] : PHASES;
  for (const phase of candidates) {
    for (const sep of ["_", "/", "."]) {
      if (name.length > phase.length + 1 && name.startsWith(phase + sep)) {
        return [PHASE_ALIASES[phase] || phase, name.slice(phase.length + 1)];
      }
      if (name.length > phase.length + 1 && name.endsWith(sep + phase)) {
        return [PHASE_ALIASES[phase] || phase, name.slice(0, -(phase.length + 1))];
      }
    }
  }
  return [null, name];
}

function normalisePhase(phase) {
  const p = String(phase || "").toLowerCase();
  return PHASE_ALIASES[p] || p || "train";
}

/** How a phase is drawn: its rank orders lines and picks a dash style. */
export const PHASE_ORDER = ["train", "val", "test", "predict"];

/**
 * One line of a chart: every point kept, with every x it can be drawn against
 * (step, epoch, seconds since the run's first message, wall time in ms).
 * Display thinning and smoothing happen later (series-data.js).
 */
export class Series {
  constructor(key, { label = key, phase = null, granularity = "step" } = {}) {
    this.key = key;
    this.name = label; // the line's name in a legend
    this.phase = phase;
    this.granularity = granularity; // "epoch": one value per epoch; "step": per step
    this.x = { step: [], epoch: [], time: [], wall: [] };
    this.values = []; // y per point; null is a gap
    this.texts = null; // optional hover text per point
    this.nonFinite = 0;
    this.has = { step: false, epoch: false, time: false, wall: false }; // which x axes it has
    this.attempt = 0; // the run attempt (DESIGN §7) of the last point
    this.source = null; // the message type that feeds it (others logging the same line are skipped)
    this.views = {}; // axis -> {xs, ys, text, monotonic, n}, extended as points arrive
  }
  get length() { return this.values.length; }
  // The points against the default axis (step, or epoch where a line has no steps).
  get xs() { return this.view("step").xs; }
  get ys() { return this.view("step").ys; }
  get text() { return this.view("step").text; }
  get monotonic() { return this.view("step").monotonic; }

  push({ step = null, epoch = null, time = null, wall = null }, y, text) {
    const n = this.values.length;
    if (step !== null) this.has.step = true;
    if (epoch !== null) this.has.epoch = true;
    if (time !== null) this.has.time = this.has.wall = true;
    this.x.step.push(step);
    this.x.epoch.push(epoch);
    this.x.time.push(time);
    this.x.wall.push(wall);
    this.values.push(y);
    if (text !== undefined) {
      if (!this.texts) this.texts = new Array(n).fill("");
      this.texts.push(text);
    } else if (this.texts) {
      this.texts.push("");
    }
    if (y !== null && !Number.isFinite(y)) this.nonFinite += 1;
  }

  /** A break in the line (a new attempt of the run starts): drawn as a gap, never joined. */
  gap(x) {
    this.push(x, null);
  }

  /**
   * The points that have an x on `axis` ("step", "epoch", "time", "wall"),
   * as {xs, ys, text, monotonic}; a line with no x on that axis at all falls
   * back to step, epoch, then time (system metrics have only time).
   * Cached and extended incrementally.
   */
  view(axis) {
    const source = this.has[axis] ? axis : ["step", "epoch", "time"].find((a) => this.has[a]) || axis;
    let v = this.views[axis];
    if (!v || v.source !== source || (this.texts && !v.text)) {
      v = { source, xs: [], ys: [], text: this.texts ? [] : null, monotonic: true, n: 0 };
      this.views[axis] = v;
    }
    const xs = this.x[source];
    for (let i = v.n; i < this.values.length; i++) {
      const x = xs[i];
      if (x === null || x === undefined) continue;
      const k = v.xs.length;
      if (k && x < v.xs[k - 1]) v.monotonic = false;
      v.xs.push(x);
      v.ys.push(this.values[i]);
      if (v.text) v.text.push(this.texts[i]);
    }
    v.n = this.values.length;
    return v;
  }
}

// Sections in page order: [key, heading].
export const SECTIONS = [
  ["metrics", "Metrics"],
  ["round", "Federated rounds"],
  ["client", "Per client"],
  ["optim", "Optimizer"],
  ["system", "System"],
];

/** Optimizer values (learning rates, momentum, ...): their own section, never a "train" line. */
const OPTIMIZER_NAME = /(^|[-_/.])(lr|learning[-_]?rate|momentum|weight[-_]?decay|betas?\d?)($|[-_/.])/i;

export function isOptimizerValue(name) {
  return OPTIMIZER_NAME.test(name);
}

/** One chart: a metric, with a line per (phase, granularity, client, ...). */
export class Chart {
  constructor(id, section, metric, title) {
    this.id = id;
    this.section = section;
    this.metric = metric; // the name charts are matched on (data-metric)
    this.title = title;
    this.traces = new Map(); // key -> Series, in first-seen order
  }
  series(key, options) {
    let s = this.traces.get(key);
    if (!s) {
      s = new Series(key, options);
      this.traces.set(key, s);
    }
    return s;
  }
  get points() {
    let n = 0;
    for (const s of this.traces.values()) n += s.length;
    return n;
  }
}

const TIMELINE_LIMIT = 1000;

/** Everything the page knows about one run, built from its frames in seq order. */
export class RunModel {
  constructor(experimentId) {
    this.id = experimentId;
    this.reset();
  }

  reset() {
    this.lastSeq = -1;
    this.messages = 0;
    this.status = "unknown";
    this.statusMessage = "";
    this.lastError = null;
    this.firstTimestamp = null;
    this.firstTime = null; // ms of the first timestamp: x=time counts from it
    this.lastTimestamp = null;
    this.mode = null; // training_mode data
    this.hparams = null; // hparams messages and training_start data, flattened
    this.progress = {}; // epoch / round progress
    this.charts = new Map();
    this.timeline = [];
    this.timelineDropped = 0;
    this.clientCounters = new Map();
    this.unknownTypes = 0;
    this.attempt = 0; // +1 at every later training_start (DESIGN §7)
    this.started = false;
    this.lastStep = null; // the latest global step seen (epoch values without one use it)
    this.now = null; // the x values of the frame being applied
    // What changed since the view last drew: chart ids with new points, and a flag for the rest.
    this.dirtyCharts = new Set();
    this.metaDirty = true;
    this.resets = (this.resets || 0) + 1;
  }

  chart(section, metric, title = metric) {
    const id = `${section}:${metric}`;
    let c = this.charts.get(id);
    if (!c) {
      c = new Chart(id, section, metric, title);
      this.charts.set(id, c);
    }
    return c;
  }

  /**
   * Add a value to `chart`'s line `key`. `x` overrides the frame's x values
   * ({step, epoch}). A line is fed by one message type, the first that gave
   * it a value: the callback's epoch_end and the logger's `<name>_epoch`, or
   * batch_metrics and the logger's `<name>_step`, carry the same values.
   */
  point(chart, key, value, { label = key, phase = null, granularity = "step", x = {}, text, source } = {}) {
    const y = toNumber(value);
    if (y === undefined) return;
    const at = { ...this.now, ...x };
    if (at.step === undefined) at.step = null;
    if (at.epoch === undefined) at.epoch = null;
    if (at.step === null && at.epoch === null && at.time === null) return;
    const series = chart.series(key, { label, phase, granularity });
    if (source) {
      if (series.source === null) series.source = source;
      else if (series.source !== source) return; // the same values by another path
    }
    if (series.attempt !== this.attempt) {
      if (series.length) series.gap(at);
      series.attempt = this.attempt;
    }
    series.push(at, y, text);
    this.dirtyCharts.add(chart.id);
  }

  event(kind, message, extra) {
    if (this.timeline.length >= TIMELINE_LIMIT) {
      this.timeline.splice(0, 1);
      this.timelineDropped += 1;
    }
    this.timeline.push({ kind, seq: message.seq, timestamp: message.timestamp, ...extra });
  }

  /** Apply one frame; returns false for a duplicate or stale seq (already applied). */
  apply(message) {
    if (!message || typeof message.type !== "string") return false;
    if (typeof message.seq === "number") {
      if (message.seq <= this.lastSeq) return false;
      this.lastSeq = message.seq;
    }
    this.messages += 1;
    let wall = null;
    if (typeof message.timestamp === "string") {
      if (!this.firstTimestamp) this.firstTimestamp = message.timestamp;
      this.lastTimestamp = message.timestamp;
      wall = Date.parse(message.timestamp);
      if (!Number.isFinite(wall)) wall = null;
      if (wall !== null && this.firstTime === null) this.firstTime = wall;
    }
    this.metaDirty = true;
    const status = statusOf(message);
    if (status) this.status = status;
    const data = message.data && typeof message.data === "object" ? message.data : {};
    const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
    const step = num(data.step);
    if (step !== null && (this.lastStep === null || step > this.lastStep)) this.lastStep = step;
    const metrics = data.metrics && typeof data.metrics === "object" ? data.metrics : {};
    this.now = {
      step,
      epoch: num(data.epoch) ?? num(metrics.epoch),
      time: wall === null ? null : (wall - this.firstTime) / 1000,
      wall,
    };
    const handler = HANDLERS[message.type];
    if (handler) handler(this, data, message);
    else this.unknownTypes += 1;
    return true;
  }

  /** Metric values of a dict as [name, value] for numeric (or non-finite string) entries. */
  static numeric(metrics) {
    const out = [];
    if (!metrics || typeof metrics !== "object") return out;
    for (const [name, value] of Object.entries(metrics)) {
      if (INDEX_KEYS.has(name) || typeof value === "boolean") continue;
      if (toNumber(value) !== undefined) out.push([name, value]);
    }
    return out;
  }

  /** The epoch counter as the run numbers it: "epoch 3/5" (never 6/5). */
  epochLabel() {
    const p = this.progress;
    if (p.epoch == null) return null;
    // A run whose first epoch is 0 counts from 0 (Lightning's current_epoch): show a count.
    const shown = p.firstEpoch === 0 ? p.epoch + 1 : p.epoch;
    return p.totalEpochs != null ? `epoch ${shown}/${p.totalEpochs}` : `epoch ${shown}`;
  }
}

function counterStep(data, model, counterKey) {
  if (typeof data.step === "number") return data.step;
  const n = (model.clientCounters.get(counterKey) || 0) + 1;
  model.clientCounters.set(counterKey, n);
  return n;
}

function clientLabel(id) {
  return `client ${id}`;
}

/** A line's key and legend name: phase, batch values apart, client first. */
function lineName(phase, granularity, client) {
  let name = phase || "value";
  if (granularity === "step" && phase !== null && phase !== "val" && phase !== "test") name = `${phase} (batch)`;
  if (granularity === "step" && phase === null) name = "batch";
  return client ? `${clientLabel(client)} ${name}` : name;
}

/**
 * A value of a run, wherever it was logged: its chart is the metric name with
 * the phase prefix moved into the phase; optimizer values go to their own
 * section with no phase.
 */
function metricPoint(model, rawName, value, { phase: known, granularity, client, source, x, text }) {
  if (isOptimizerValue(rawName)) {
    const chart = model.chart("optim", rawName);
    const key = client ? clientLabel(client) : rawName;
    model.point(chart, key, value, { label: key, phase: null, granularity: "step", source, x, text });
    return;
  }
  let [phase, base] = splitPhase(rawName, known);
  phase = phase ? normalisePhase(phase) : (known ? normalisePhase(known) : null);
  if (!phase && granularity === "step") phase = "train";
  const key = lineName(phase, granularity, client);
  model.point(model.chart("metrics", base), key, value,
    { label: key, phase, granularity, source, x, text });
}

/**
 * Aggregated metrics of a round, one chart per metric with a line per stage:
 * fit `train_loss` and `val_loss` and eval `eval_loss` all land on "loss" as
 * "fit train", "fit val" and "eval"; a server-side `test_loss` as "server test".
 */
function roundPoints(model, stage, metrics, round) {
  for (const [name, value] of RunModel.numeric(metrics)) {
    if (name === "num-examples") continue;
    const [phase, base] = splitPhase(name, stage === "eval" ? "eval" : undefined);
    const trace = !phase || phase === stage ? stage : `${stage} ${phase}`;
    model.point(model.chart("round", base), trace, value,
      { phase: trace, granularity: "epoch", x: { step: round, epoch: round } });
  }
}

/** {name: value} leaves of a nested dict, names dotted. */
function leaves(value, prefix = "", out = []) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) leaves(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (typeof value !== "boolean" && toNumber(value) !== undefined) {
    out.push([prefix, value]);
  }
  return out;
}

const DEVICE = /^(?:(gpu|cuda|device|dev)[:_-]?)?(\d+)$/i;

const HANDLERS = {
  epoch_start(model, data) {
    if (typeof data.epoch === "number" && model.progress.firstEpoch === undefined) {
      model.progress.firstEpoch = data.epoch;
    }
    model.progress.epoch = data.epoch;
    if (data.total_epochs != null) model.progress.totalEpochs = data.total_epochs;
  },
  epoch_end(model, data) {
    const phase = normalisePhase(data.phase);
    // An epoch value without its own step is drawn at the latest step seen.
    const x = { step: model.now.step ?? model.lastStep };
    for (const [name, value] of RunModel.numeric(data.metrics)) {
      metricPoint(model, name, value, { phase, granularity: "epoch", source: "epoch_end", x });
    }
  },
  metrics(model, data) {
    // A federated client's logger tags its values with client_id: a line per client.
    const client = data.client_id != null ? String(data.client_id) : null;
    const x = { step: counterStep(data, model, `__logged__${client}`) };
    for (const [name, value] of RunModel.numeric(data.metrics)) {
      // Lightning names on_epoch values `<name>_epoch` and on_step ones `<name>_step`;
      // a bare train value is per step, a bare val/test value per epoch.
      let base = name;
      let granularity = null;
      if (name.endsWith("_epoch") && name.length > 6) { base = name.slice(0, -6); granularity = "epoch"; }
      else if (name.endsWith("_step") && name.length > 5) { base = name.slice(0, -5); granularity = "step"; }
      if (!granularity) {
        const [phase] = splitPhase(base);
        granularity = phase && normalisePhase(phase) !== "train" ? "epoch" : "step";
      }
      metricPoint(model, base, value, { granularity, client, source: "metrics", x });
    }
  },
  batch_metrics(model, data) {
    const client = data.client_id != null ? String(data.client_id) : null;
    const x = { step: counterStep(data, model, `__batch__${client}`) };
    const text = data.epoch != null ? `epoch ${data.epoch}` : undefined;
    for (const [name, value] of RunModel.numeric(data)) {
      metricPoint(model, name, value, { phase: "train", granularity: "step", client, source: "batch_metrics", x, text });
    }
  },
  round_start(model, data) {
    model.progress.round = data.round;
    if (data.total_rounds != null) model.progress.totalRounds = data.total_rounds;
  },
  round_end(model, data) {
    model.progress.round = data.round;
    if (data.total_rounds != null) model.progress.totalRounds = data.total_rounds;
    roundPoints(model, "fit", data.fit_metrics, data.round);
    roundPoints(model, "eval", data.eval_metrics, data.round);
  },
  round_metrics(model, data) {
    // A server-side evaluate_fn: Flower calls it before round 1 too (round 0).
    roundPoints(model, "server", data.metrics, data.round);
  },
  client_complete(model, data, message) {
    const client = String(data.client_id);
    if (data.error != null) {
      model.event("client_error", message, {
        title: `client ${client} failed in round ${data.round}`,
        detail: String(data.error),
      });
    }
    for (const [name, value] of RunModel.numeric(data.metrics)) {
      if (name === "num-examples") continue; // Flower's weighting count, not a measurement
      const chart = model.chart("client", `round/${name}`, `${name} per client`);
      model.point(chart, clientLabel(client), value,
        { granularity: "epoch", x: { step: data.round, epoch: data.round } });
    }
  },
  local_epoch(model, data) {
    const client = String(data.client_id);
    const key = `__local__${client}`;
    const n = (model.clientCounters.get(key) || 0) + 1;
    model.clientCounters.set(key, n);
    for (const [name, value] of RunModel.numeric(data.metrics)) {
      const chart = model.chart("client", `local/${name}`, `${name} per local epoch`);
      model.point(chart, clientLabel(client), value, {
        granularity: "epoch", x: { step: n, epoch: n },
        text: `round ${data.round}, local epoch ${data.local_epoch}`,
      });
    }
  },
  gradient_stats(model, data) {
    const x = { step: counterStep(data, model, "__grad__") };
    const chart = model.chart("optim", "grad_norm", "gradient norm");
    for (const key of ["total_norm", "max_norm", "min_norm"]) {
      if (data[key] != null) model.point(chart, key, data[key], { x });
    }
  },
  lr_update(model, data) {
    const x = { step: counterStep(data, model, "__lr__") };
    const key = data.scheduler_type ? `lr (${data.scheduler_type})` : "lr";
    model.point(model.chart("optim", "lr", "learning rate"), key, data.current_lr, { x });
  },
  system_metrics(model, data) {
    // One line per host/rank/device: a device index in the path goes into the line's name.
    const who = [data.host, data.rank != null ? `rank ${data.rank}` : null].filter((v) => v != null && v !== "");
    for (const [path, value] of leaves(data.metrics)) {
      const parts = path.split(".");
      const device = [];
      const name = [];
      for (const part of parts) {
        const m = part.match(DEVICE);
        if (m && parts.length > 1) device.push(`${(m[1] || "gpu").toLowerCase()}${m[2]}`);
        else name.push(part);
      }
      const metric = name.join(".") || path;
      const key = [...who, ...device].join(" ") || "value";
      model.point(model.chart("system", metric), key, value, { x: { step: null, epoch: null } });
    }
  },
  hparams(model, data) {
    model.hparams = { ...(model.hparams || {}), ...flatHparams(data) };
  },
  training_mode(model, data, message) {
    model.mode = data;
    const detail = data.is_federated
      ? `federated: ${data.num_rounds ?? "?"} rounds, ${data.num_clients ?? "?"} clients`
      : "centralized";
    model.event("training_mode", message, { title: "training mode", detail });
  },
  training_start(model, data, message) {
    // A later training_start in the same file is a resumed run: a new attempt (DESIGN §7).
    if (model.started) model.attempt += 1;
    model.started = true;
    const { hparams, ...rest } = data;
    const fields = {};
    for (const [k, v] of Object.entries(rest)) {
      if (v !== null && typeof v !== "object" && !["experiment_id", "run_id"].includes(k)) fields[k] = v;
    }
    model.hparams = { ...fields, ...(model.hparams || {}), ...flatHparams(hparams) };
    if (!Object.keys(model.hparams).length) model.hparams = null;
    model.event("training_start", message, {
      title: model.attempt ? `training started (attempt ${model.attempt + 1})` : "training started",
      detail: summarise(data),
    });
  },
  training_end(model, data, message) {
    model.event("training_end", message, { title: "training ended", detail: summarise(data) });
  },
  status(model, data, message) {
    model.statusMessage = data.message ? String(data.message) : "";
    model.event("status", message, {
      title: `status: ${data.status ?? "?"}`,
      detail: data.message ? String(data.message) : "",
      status: statusOf(message),
    });
  },
  error(model, data, message) {
    model.lastError = {
      error: String(data.error ?? "error"),
      type: data.error_type ? String(data.error_type) : "",
      traceback: data.traceback ? String(data.traceback) : "",
    };
    model.event("error", message, {
      title: `error${data.error_type ? ` (${data.error_type})` : ""}`,
      detail: model.lastError.error,
      traceback: model.lastError.traceback,
    });
  },
  early_stopping(model, data, message) {
    const parts = [];
    if (data.epoch != null) parts.push(`epoch ${data.epoch}`);
    if (data.metric_name) parts.push(`best ${data.metric_name} = ${data.best_metric_value}`);
    if (data.patience != null) parts.push(`patience ${data.patience}`);
    if (data.reason) parts.push(String(data.reason));
    model.event("early_stopping", message, { title: "early stopping", detail: parts.join(", ") });
  },
};
// Types the page knows and deliberately does not chart.
for (const kind of ["client_training_start", "client_progress", "replay_end"]) HANDLERS[kind] = () => {};

/** Hyperparameters as one flat {key: scalar} (nested dicts dotted, lists as JSON). */
export function flatHparams(data, prefix = "", out = {}) {
  if (!data || typeof data !== "object") return out;
  for (const [k, v] of Object.entries(data)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatHparams(v, key, out);
    else out[key] = Array.isArray(v) ? JSON.stringify(v) : v;
  }
  return out;
}

function summarise(data) {
  const parts = [];
  for (const [k, v] of Object.entries(data || {})) {
    if (v === null || typeof v === "object") continue;
    parts.push(`${k}: ${typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : v}`);
    if (parts.length >= 8) break;
  }
  return parts.join(", ");
}

/** Min/max thinning of points [i0, i1) into about `buckets` buckets; never touches the data. */
export function decimate(series, i0, i1, buckets) {
  const xs = series.xs, ys = series.ys, text = series.text;
  const n = i1 - i0;
  const outX = [], outY = [], outT = text ? [] : null;
  const emit = (i) => {
    const y = ys[i];
    outX.push(xs[i]);
    outY.push(Number.isFinite(y) ? y : null);
    if (outT) outT.push(text[i]);
  };
  if (n <= 2 * buckets) {
    for (let i = i0; i < i1; i++) emit(i);
    return { x: outX, y: outY, text: outT };
  }
  const size = n / buckets;
  for (let b = 0; b < buckets; b++) {
    const start = i0 + Math.floor(b * size);
    const end = Math.min(i1, i0 + Math.floor((b + 1) * size));
    if (start >= end) continue;
    let lo = -1, hi = -1, gap = false;
    for (let i = start; i < end; i++) {
      const y = ys[i];
      if (!Number.isFinite(y)) { gap = true; continue; }
      if (lo < 0 || y < ys[lo]) lo = i;
      if (hi < 0 || y > ys[hi]) hi = i;
    }
    if (lo >= 0) {
      if (lo === hi) emit(lo);
      else if (lo < hi) { emit(lo); emit(hi); } else { emit(hi); emit(lo); }
    }
    if (gap) {
      outX.push(xs[end - 1]);
      outY.push(null);
      if (outT) outT.push("");
    }
  }
  // The newest point is always drawn (a live line shows at once, extreme or not).
  if (outX[outX.length - 1] !== xs[i1 - 1]) emit(i1 - 1);
  return { x: outX, y: outY, text: outT };
}

/** First index with xs[i] >= x in a monotonic series. */
export function lowerBound(xs, x) {
  let lo = 0, hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo;
}
