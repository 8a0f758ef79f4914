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

import { Store } from "./store.js";
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
  const { id } = store.route;
  if (view && view.feed.id !== id) {
    view.destroy();
    view = null;
  }
  if (id && !view) {
    view = new RunView(store, store.feeds.get(id));
    document.title = `${id} · runtail`;
  }
  if (!id) {
    $("#run").hidden = true;
    $("#welcome").hidden = false;
    document.title = "runtail";
  }
  document.body.dataset.route = id ? "run" : "list";
  listDirty = true;
  scheduleRender();
}

/** Run a user action and show its effect at once, not on the next frame. */
function act(action) {
  return () => {
    if (!view) return;
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
  view: () => view && {
    id: view.feed.id,
    replay: view.feed.replay ? view.feed.replay.state : null,
    live: { messages: view.feed.live.messages, lastSeq: view.feed.live.lastSeq, status: view.feed.live.status },
    shown: { messages: view.feed.model.messages, lastSeq: view.feed.model.lastSeq, status: view.feed.model.status },
    charts: view.board.describe(),
    // Every chart shows every point the model holds (nothing waits for a frame).
    settled: view.feed.model.dirtyCharts.size === 0 && view.board.deferred.size === 0
      && view.feed.model.charts.size === view.board.states.size,
  },
};

start();
