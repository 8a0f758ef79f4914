//# allFunctionsCalledOnLoad
// (V8: compile this module whole off the main thread as it loads; docs/DESIGN.md §9.)
// Where a chart gets the points it draws for one line: the one place to
// change how a line is fetched, smoothed or reduced for display.
//
// Today every point is in the browser (the run's model holds them all). The
// smoothed line is computed on the full-resolution series, in x order, before
// any thinning; a line longer than the chart is wide is then thinned to
// min/max per pixel column of the visible range, so spikes survive and
// zooming in shows the raw points.

import { decimate, lowerBound } from "./model.js";
import { remotePoints } from "./reduced.js";

/**
 * TensorBoard's debiased exponential moving average of `ys` (in order):
 * `last = w·last + (1−w)·v`, shown `last / (1 − w^k)` after k finite values.
 * Non-finite values and gaps (null) pass through and do not count.
 */
export function emaSmooth(ys, w, state = { last: 0, k: 0, out: [] }, from = 0) {
  for (let i = from; i < ys.length; i++) {
    const v = ys[i];
    if (v === null || !Number.isFinite(v)) {
      state.out.push(v);
      continue;
    }
    state.last = w * state.last + (1 - w) * v;
    state.k += 1;
    state.out.push(state.last / (1 - w ** state.k));
  }
  return state;
}

/** A view's points in x order (a copy only when they are not in order already). */
function ordered(view) {
  if (view.monotonic) return view;
  const idx = view.xs.map((_, i) => i).sort((a, b) => view.xs[a] - view.xs[b] || a - b);
  return {
    xs: idx.map((i) => view.xs[i]),
    ys: idx.map((i) => view.ys[i]),
    text: view.text ? idx.map((i) => view.text[i]) : null,
    monotonic: true,
  };
}

/** The smoothed copy of a view, cached on it and extended as points arrive. */
function smoothedView(view, w) {
  const base = ordered(view);
  if (base !== view) {
    return { ...base, ys: emaSmooth(base.ys, w).out, text: null };
  }
  let cache = view.smoothed;
  if (!cache || cache.w !== w || cache.out.length > view.ys.length) {
    cache = { w, last: 0, k: 0, out: [] };
    view.smoothed = cache;
  }
  emaSmooth(view.ys, w, cache, cache.out.length);
  return { xs: view.xs, ys: cache.out, text: null, monotonic: true };
}

/**
 * The points to draw of `series` (a model.js Series) against `axis`:
 * `{x, y, text}` with non-finite values as null (gaps).
 *
 * `range` is the visible x range after a zoom ([x0, x1]) or null for all;
 * `width` the plot's width in pixels; `thinned` whether the chart draws a
 * reduced copy; `smooth` the EMA weight (0: the raw values). A line of a big
 * run (reduced.js) shows the server's points for a zoomed range once they
 * arrive (`redraw` is called then); until then, what the model holds, marked
 * `pending` (the chart waits for the answer rather than drawing twice).
 */
export function seriesPoints(series, { axis = "step", range = null, width = 600, thinned = false, smooth = 0, redraw } = {}) {
  let pending = false;
  if (redraw && axis === "step" && !smooth) {
    const remote = remotePoints(series, range, width, redraw);
    if (remote && !remote.pending) return remote;
    pending = Boolean(remote);
  }
  let view = series.view(axis);
  if (smooth > 0) view = smoothedView(view, smooth);
  let i0 = 0;
  let i1 = view.xs.length;
  if (thinned && range && view.monotonic) {
    i0 = Math.max(0, lowerBound(view.xs, range[0]) - 1);
    i1 = Math.min(view.xs.length, lowerBound(view.xs, range[1]) + 1);
  }
  const points = decimate(view, i0, i1, thinned ? width : Infinity);
  if (pending) points.pending = true; // the server's points for `range` are on their way
  return points;
}
