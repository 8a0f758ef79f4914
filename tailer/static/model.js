// The run model: turns the tailer's frames into chartable series and a timeline.
//
// Pure data, no DOM and no Plotly, so it can be reasoned about (and tested) on
// its own. A frame is the recorded message plus `experiment_id` and `seq`.

/** Values the recorder writes for non-finite floats. */
const NON_FINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

/** Keys that index a value rather than measure something (DESIGN §4). */
const INDEX_KEYS = new Set([
  "epoch", "step", "round", "round_num", "total_epochs", "total_rounds",
  "batch_idx", "local_epoch", "client_id", "num_examples",
]);

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

/** One line of a chart: every point kept (display thinning happens in charts.js). */
export class Series {
  constructor(name) {
    this.name = name;
    this.xs = [];
    this.ys = [];
    this.text = null; // optional hover text per point
    this.nonFinite = 0;
    this.monotonic = true;
  }
  get length() { return this.xs.length; }
  push(x, y, text) {
    const n = this.xs.length;
    if (n && x < this.xs[n - 1]) this.monotonic = false;
    this.xs.push(x);
    this.ys.push(y);
    if (text !== undefined) {
      if (!this.text) this.text = new Array(n).fill("");
      this.text.push(text);
    } else if (this.text) {
      this.text.push("");
    }
    if (!Number.isFinite(y)) this.nonFinite += 1;
  }
}

export const SECTIONS = [
  ["epoch", "Epoch metrics"],
  ["logged", "Logged metrics (Lightning)"],
  ["batch", "Batch metrics"],
  ["round", "Federated rounds"],
  ["client", "Per client"],
  ["optim", "Optimizer"],
];

export class Chart {
  constructor(id, section, title, xTitle) {
    this.id = id;
    this.section = section;
    this.title = title;
    this.xTitle = xTitle;
    this.traces = new Map(); // name -> Series, in first-seen order
  }
  series(name) {
    let s = this.traces.get(name);
    if (!s) {
      s = new Series(name);
      this.traces.set(name, s);
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
    this.lastTimestamp = null;
    this.mode = null; // training_mode data
    this.hparams = null;
    this.progress = {}; // epoch / round progress
    this.charts = new Map();
    this.timeline = [];
    this.timelineDropped = 0;
    this.clientCounters = new Map();
    this.unknownTypes = 0;
    // What changed since the view last drew: chart ids with new points, and a flag for the rest.
    this.dirtyCharts = new Set();
    this.metaDirty = true;
    this.resets = (this.resets || 0) + 1;
  }

  chart(section, key, title, xTitle) {
    const id = `${section}:${key}`;
    let c = this.charts.get(id);
    if (!c) {
      c = new Chart(id, section, title, xTitle);
      this.charts.set(id, c);
    }
    return c;
  }

  point(chart, traceName, x, value, text) {
    const y = toNumber(value);
    if (y === undefined || typeof x !== "number" || !Number.isFinite(x)) return;
    chart.series(traceName).push(x, y, text);
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
    if (typeof message.timestamp === "string") {
      if (!this.firstTimestamp) this.firstTimestamp = message.timestamp;
      this.lastTimestamp = message.timestamp;
    }
    this.metaDirty = true;
    const status = statusOf(message);
    if (status) this.status = status;
    const data = message.data && typeof message.data === "object" ? message.data : {};
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
}

function stepOf(data, model, counterKey) {
  if (typeof data.step === "number") return data.step;
  const n = (model.clientCounters.get(counterKey) || 0) + 1;
  model.clientCounters.set(counterKey, n);
  return n;
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
    model.point(model.chart("round", base, base, "round"), trace, round, value);
  }
}

function clientLabel(id) {
  return `client ${id}`;
}

const HANDLERS = {
  epoch_start(model, data) {
    model.progress.epoch = data.epoch;
    if (data.total_epochs != null) model.progress.totalEpochs = data.total_epochs;
  },
  epoch_end(model, data) {
    const phase = normalisePhase(data.phase);
    for (const [name, value] of RunModel.numeric(data.metrics)) {
      const [, base] = splitPhase(name, phase);
      const chart = model.chart("epoch", base, base, "epoch");
      model.point(chart, phase, data.epoch, value);
    }
  },
  metrics(model, data) {
    // A federated client's logger tags its values with client_id: a line per client.
    const client = data.client_id != null ? String(data.client_id) : null;
    const x = stepOf(data, model, `__logged__${client}`);
    for (const [name, value] of RunModel.numeric(data.metrics)) {
      const [phase, base] = splitPhase(name);
      // Lightning names on_epoch values `<name>_epoch` and on_step ones `<name>_step`:
      // epoch values share a chart with val/test `<name>`; step values get their own.
      let key = base;
      let title = base;
      if (base.endsWith("_epoch") && base.length > 6) {
        key = title = base.slice(0, -6);
      } else if (base.endsWith("_step") && base.length > 5) {
        title = `${base.slice(0, -5)} per step`;
      }
      const chart = model.chart("logged", key, title, "step");
      const line = phase || name;
      model.point(chart, client ? `${clientLabel(client)} ${line}` : line, x, value);
    }
  },
  batch_metrics(model, data) {
    const client = data.client_id != null ? String(data.client_id) : null;
    const x = stepOf(data, model, `__batch__${client}`);
    for (const [name, value] of RunModel.numeric(data)) {
      const chart = model.chart("batch", name, name, "step");
      model.point(chart, client ? clientLabel(client) : name, x, value,
        data.epoch != null ? `epoch ${data.epoch}` : undefined);
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
      const chart = model.chart("client", `round:${name}`, `${name} per client`, "round");
      model.point(chart, clientLabel(client), data.round, value);
    }
  },
  local_epoch(model, data) {
    const client = String(data.client_id);
    const key = `__local__${client}`;
    const n = (model.clientCounters.get(key) || 0) + 1;
    model.clientCounters.set(key, n);
    for (const [name, value] of RunModel.numeric(data.metrics)) {
      const chart = model.chart("client", `local:${name}`, `${name} per local epoch`,
        "local epoch (all rounds)");
      model.point(chart, clientLabel(client), n, value,
        `round ${data.round}, local epoch ${data.local_epoch}`);
    }
  },
  gradient_stats(model, data) {
    const x = stepOf(data, model, "__grad__");
    const chart = model.chart("optim", "grad_norm", "gradient norm", "step");
    for (const key of ["total_norm", "max_norm", "min_norm"]) {
      if (data[key] != null) model.point(chart, key, x, data[key]);
    }
  },
  lr_update(model, data) {
    const x = stepOf(data, model, "__lr__");
    model.point(model.chart("optim", "lr", "learning rate", "step"),
      data.scheduler_type ? `lr (${data.scheduler_type})` : "lr", x, data.current_lr);
  },
  hparams(model, data) {
    model.hparams = { ...(model.hparams || {}), ...data };
  },
  training_mode(model, data, message) {
    model.mode = data;
    const detail = data.is_federated
      ? `federated: ${data.num_rounds ?? "?"} rounds, ${data.num_clients ?? "?"} clients`
      : "centralized";
    model.event("training_mode", message, { title: "training mode", detail });
  },
  training_start(model, data, message) {
    model.event("training_start", message, { title: "training started", detail: summarise(data) });
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
