//# allFunctionsCalledOnLoad
// (V8: compile this module whole off the main thread as it loads; docs/DESIGN.md §9.)
// runtail dashboard: wires the store (state, streams) to the views (DOM).
//
// stream.js  WebSockets: reconnect, report state and messages (no DOM)
// store.js   runs list, open runs' models, route (no DOM)
// model.js   pure: frames -> series and timeline
// charts.js  plotly glue; series-data.js says which points a chart draws
// views.js   the list, the connection pill, a run's page
//
// The token (a server started with --token) travels by cookie only: the
// server sets it on `/?token=T`, and every later request carries it.

import { Store, routeHash } from "./store.js";
import { $, ListView, RunView, renderConnection, showNotice } from "./views.js";

let listDirty = true;
let frameRequested = false;
let owedTimer = null;
let view = null; // the RunView of the open run

const store = new Store({
  onChange: (listChanged) => {
    if (listChanged) listDirty = true;
    scheduleRender();
  },
  onNotice: showNotice,
});
const listView = new ListView(store);

function scheduleRender() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(render);
}

function render() {
  frameRequested = false;
  renderConnection(store.streams.state());
  if (listDirty) {
    listDirty = false;
    listView.render();
  }
  if (view && view.flush()) {
    // Charts are waiting: for the frame budget, or a thinned one for its next slot.
    clearTimeout(owedTimer);
    owedTimer = setTimeout(scheduleRender, 40);
  }
}

function route() {
  store.setRoute(location.hash);
  const { view: kind, id, runs } = store.route;
  const open = kind === "run" || kind === "compare";
  if (open && !view) view = new RunView(store);
  if (!open && view) {
    view.destroy();
    view = null;
  }
  if (view) {
    view.bound = null; // the runs shown may differ: bind the board again
    document.title = kind === "run" ? `${id} · runtail` : `compare ${runs.join(", ")} · runtail`;
  } else {
    $("#run").hidden = true;
    $("#welcome").hidden = false;
    document.title = "runtail";
  }
  document.body.dataset.route = open ? "run" : "list";
  listDirty = true;
  scheduleRender();
}

/** Change the route's chart options: the URL changes, and the view follows the URL. */
function setOptions(change) {
  const next = routeHash({ ...store.route, options: { ...store.route.options, ...change } });
  if (next !== location.hash) history.replaceState(null, "", next);
  route();
}

/** Run a user action and show its effect at once, not on the next frame. */
function act(action) {
  return () => {
    if (!view || !view.feed) return;
    action(view.feed);
    render();
  };
}

function start() {
  // The token reached us in the address; the cookie carries it from here on.
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname + location.hash);
  }
  $("#runs-filter").addEventListener("input", () => { listDirty = true; scheduleRender(); });
  $("#runs-sort").addEventListener("change", () => {
    const metric = $("#runs-sort").value === "metric";
    $("#runs-sort-metric").hidden = !metric;
    if (metric) $("#runs-sort-metric").focus();
    listView.loadSortMetric(metric ? $("#runs-sort-metric").value.trim() : null);
    listDirty = true;
    scheduleRender();
  });
  $("#runs-sort-metric").addEventListener("change", () => {
    listView.loadSortMetric($("#runs-sort-metric").value.trim());
  });
  $("#compare-open").addEventListener("click", () => {
    const picked = [...store.selection];
    if (!picked.length) return;
    location.hash = routeHash({ view: "compare", runs: picked, options: store.route.options });
  });
  $("#opt-x").addEventListener("change", () => setOptions({ x: $("#opt-x").value }));
  $("#opt-smooth").addEventListener("input", () => setOptions({ smooth: Number($("#opt-smooth").value) }));
  $("#opt-logy").addEventListener("change", () => setOptions({ logy: $("#opt-logy").checked }));
  $("#opt-filter").addEventListener("input", () => setOptions({ filter: $("#opt-filter").value }));
  $("#hparams-metric").addEventListener("change", () => { if (view) { view.hparamsAt = 0; view.renderMeta(); } });
  $("#replay-play").addEventListener("click", act((feed) => feed.startReplay(Number($("#replay-speed").value))));
  $("#replay-pause").addEventListener("click", act((feed) => feed.pauseReplay()));
  $("#replay-stop").addEventListener("click", act((feed) => feed.stopReplay()));
  window.addEventListener("hashchange", route);
  window.addEventListener("runtail:plotly", scheduleRender);
  window.addEventListener("online", () => store.streams.kickAll());
  const scheme = window.matchMedia("(prefers-color-scheme: dark)");
  scheme.addEventListener("change", () => view && view.board.applyTheme());
  // Relative times ("12 s ago") age on their own; this redraws text, it fetches nothing.
  setInterval(() => { listDirty = true; scheduleRender(); }, 5000);
  store.start();
  route();
}

// Test hook: read-only views of what the page holds.
window.__runtail = {
  connection: () => store.streams.state(),
  runs: () => [...store.list.runs.values()].map((r) => ({ ...r })),
  route: () => JSON.parse(JSON.stringify(store.route)),
  view: () => {
    const feed = view && view.feed;
    if (!feed) return null;
    const members = store.members();
    return {
      id: store.route.view === "run" ? store.route.id : null,
      runs: store.route.runs,
      replay: feed.replay ? feed.replay.state : null,
      live: {
        messages: members.reduce((n, m) => n + m.feed.live.messages, 0),
        lastSeq: feed.live.lastSeq,
        status: feed.live.status,
      },
      shown: { messages: feed.model.messages, lastSeq: feed.model.lastSeq, status: feed.model.status },
      charts: view.board.describe(),
      // Every chart shows every point the models hold (nothing waits for a frame).
      settled: view.bound !== null && view.board.dirty.size === 0 && view.board.deferred.size === 0
        && members.every((m) => m.feed.model.dirtyCharts.size === 0),
    };
  },
};

start();
