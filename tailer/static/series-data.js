// Where a chart gets the points it draws for one series: the one place to
// change how a line is fetched or reduced for display.
//
// Today every point is in the browser (the run's model holds them all); a line
// longer than the chart is wide is thinned here to min/max per pixel column of
// the visible range, so spikes survive and zooming in shows the raw points.

import { decimate, lowerBound } from "./model.js";
import { remotePoints } from "./reduced.js";

/**
 * The points to draw of `series` (a model.js Series): `{x, y, text}` with
 * non-finite values as null (gaps).
 *
 * `range` is the visible x range after a zoom ([x0, x1]) or null for all;
 * `width` the plot's width in pixels; `thinned` whether the chart draws a
 * reduced copy (false: every point, for extendTraces). A line of a big run
 * (reduced.js) shows the server's points for a zoomed range once they arrive
 * (`redraw` is called then); until then, what the model holds.
 */
export function seriesPoints(series, { range = null, width = 600, thinned = false, redraw } = {}) {
  const remote = redraw ? remotePoints(series, range, width, redraw) : null;
  if (remote) return remote;
  let i0 = 0;
  let i1 = series.length;
  if (thinned && range && series.monotonic) {
    i0 = Math.max(0, lowerBound(series.xs, range[0]) - 1);
    i1 = Math.min(series.length, lowerBound(series.xs, range[1]) + 1);
  }
  return decimate(series, i0, i1, thinned ? width : Infinity);
}
