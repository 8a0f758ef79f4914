"""The dashboard's data layer (tailer/static/model.js), run in Chromium against Python's reference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from recorder.format import status_of
from tests._dashboard_helpers import ConsoleWatch, launch, serving

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")
if not Path("/usr/bin/chromium").exists():  # pragma: no cover
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A page with model.js imported as `window.M`, served by a real tailer."""
    directory = tmp_path_factory.mktemp("runs")
    with sync_api.sync_playwright() as p, serving(directory) as server:
        browser = launch(p)
        page = browser.new_page()
        console = ConsoleWatch(page)
        page.goto(server.page_url())
        page.evaluate("async () => { window.M = await import('/static/model.js'); }")
        yield page
        console.check()
        browser.close()


STATUS_MESSAGES = [
    {"type": "training_end", "data": {}},
    {"type": "error", "data": {"error": "x"}},
    {"type": "training_start", "data": {}},
    {"type": "epoch_start", "data": {"epoch": 0}},
    {"type": "round_start", "data": {"round": 1}},
    {"type": "epoch_end", "data": {}},
    {"type": "status", "data": "not a dict"},
    {"type": "status", "data": {}},
    *(
        {"type": "status", "data": {"status": s}}
        for s in [
            "completed",
            "failed",
            "running",
            "started",
            "starting",
            "training",
            "in_progress",
            "error",
            "crashed",
            "finished",
            "done",
            "success",
            "paused",
            "COMPLETED",
            None,
            3,
        ]
    ),
]


def test_status_of_matches_the_recorder(page):
    """The page derives a run's status from a message exactly as recorder.format.status_of does."""
    got = page.evaluate("(ms) => ms.map((m) => M.statusOf(m))", STATUS_MESSAGES)
    assert got == [status_of(m) for m in STATUS_MESSAGES]


def test_non_finite_values_are_kept_and_drawn_as_gaps(page):
    """ "NaN"/"Infinity"/"-Infinity" become points in the data, counted, and gaps on the chart."""
    result = page.evaluate(
        """() => {
            const model = new M.RunModel('x');
            const values = [1.0, 'NaN', 2.0, 'Infinity', '-Infinity', 3.0, 'not a number'];
            values.forEach((v, i) => model.apply({type: 'epoch_end', seq: i,
                data: {epoch: i, phase: 'train', metrics: {loss: v}}}));
            const s = model.charts.get('metrics:loss').traces.get('train');
            const shown = M.decimate(s, 0, s.length, Infinity);
            return {ys: s.ys.map(String), nonFinite: s.nonFinite, shown: shown.y};
        }"""
    )
    assert result["ys"] == ["1", "NaN", "2", "Infinity", "-Infinity", "3"]
    assert result["nonFinite"] == 3
    assert result["shown"] == [1, None, 2, None, None, 3]


def test_duplicate_and_stale_seqs_are_ignored(page):
    """A frame whose seq the model already has is dropped, so a resent history adds nothing."""
    counts = page.evaluate(
        """() => {
            const model = new M.RunModel('x');
            const frame = (seq) => ({type: 'batch_metrics', seq, data: {step: seq, loss: 1}});
            const applied = [0, 1, 2, 1, 2, 3, 0].map((s) => model.apply(frame(s)));
            return {applied, points: model.charts.get('metrics:loss').points, lastSeq: model.lastSeq};
        }"""
    )
    assert counts == {
        "applied": [True, True, True, False, False, True, False],
        "points": 4,
        "lastSeq": 3,
    }


@pytest.mark.parametrize("n, buckets", [(10, 100), (100_000, 800), (12_345, 7)])
def test_decimate_keeps_every_extreme(page, n, buckets):
    """Thinning keeps each bucket's minimum and maximum (so no spike disappears), the last point, and few points."""
    result = page.evaluate(
        """([n, buckets]) => {
            const s = new M.Series('loss');
            for (let i = 0; i < n; i++) s.push({step: i}, Math.sin(i / 7) + (i % 997 === 0 ? 10 : 0));
            const d = M.decimate(s, 0, n, buckets);
            return {x: d.x, y: d.y};
        }""",
        [n, buckets],
    )
    ys = [math.sin(i / 7) + (10 if i % 997 == 0 else 0) for i in range(n)]
    if n <= 2 * buckets:
        assert result["x"] == list(range(n))
        return
    assert len(result["x"]) <= 2 * buckets + 1
    assert result["x"] == sorted(result["x"])  # still in order
    assert result["x"][-1] == n - 1  # the newest point (a live line) is always drawn
    size = n / buckets
    kept = dict(zip(result["x"], result["y"], strict=True))
    for b in range(buckets):
        start, end = math.floor(b * size), math.floor((b + 1) * size)
        chunk = ys[start:end]
        lo = start + chunk.index(min(chunk))
        hi = start + chunk.index(max(chunk))
        assert lo in kept and hi in kept
        assert kept[hi] == pytest.approx(ys[hi])
    assert max(result["y"]) == pytest.approx(max(ys))


def test_one_chart_per_metric_whatever_path_logged_it(page):
    """The callback's epoch values, self.log values and batch values of a metric share one chart."""
    charts = page.evaluate(
        """() => {
            const model = new M.RunModel('x');
            let seq = 0;
            const log = (step, metrics) => model.apply({type: 'metrics', seq: seq++, data: {step, metrics}});
            log(1, {train_loss_step: 1.0});
            log(2, {val_loss: 0.9, 'val/acc': 0.5});
            log(3, {train_loss_epoch: 0.8, epoch: 0});
            model.apply({type: 'epoch_end', seq: seq++, data: {epoch: 0, phase: 'validation', metrics: {val_loss: 0.7}}});
            model.apply({type: 'batch_metrics', seq: seq++, data: {step: 4, loss: 0.6, accuracy: null, epoch: 0}});
            model.apply({type: 'metrics', seq: seq++, data: {step: 4, metrics: {'lr-Adam': 0.001, train_lr: 0.1}}});
            const out = {};
            for (const [id, c] of model.charts) {
                out[id] = Object.fromEntries([...c.traces.values()].map((s) => [s.name, [s.phase, s.values]]));
            }
            return out;
        }"""
    )
    assert charts == {
        # The logger's val_loss came first: the callback's val line (same values) is skipped.
        "metrics:loss": {
            "train (batch)": ["train", [1.0]],
            "val": ["val", [0.9]],
            "train": ["train", [0.8]],
        },
        "metrics:acc": {"val": ["val", [0.5]]},
        # Learning rates are optimizer values, never a "train" line.
        "optim:lr-Adam": {"lr-Adam": [None, [0.001]]},
        "optim:train_lr": {"train_lr": [None, [0.1]]},
    }


def test_smoothing_is_tensorboards_debiased_ema(page):
    """emaSmooth matches TensorBoard's formula: last = w·last + (1−w)·v, shown last / (1 − w^k)."""
    values = [1.0, 3.0, "NaN", 2.0, 10.0, -4.0, 0.5]
    got = page.evaluate(
        """async (values) => {
            const S = await import('/static/series-data.js');
            const ys = values.map((v) => M.toNumber(v));
            return S.emaSmooth(ys, 0.6).out.map(String);
        }""",
        values,
    )
    w, last, k, want = 0.6, 0.0, 0, []
    for v in values:
        if v == "NaN":
            want.append("NaN")
            continue
        last = w * last + (1 - w) * v
        k += 1
        want.append(last / (1 - w**k))
    assert [float(g) if g != "NaN" else g for g in got] == [
        pytest.approx(x) if x != "NaN" else x for x in want
    ]


def test_a_resumed_attempt_is_never_joined_to_the_last(page):
    """A later training_start starts a new attempt: its first point follows a gap, not a line back."""
    got = page.evaluate(
        """() => {
            const model = new M.RunModel('x');
            let seq = 0;
            const ep = (epoch, loss) => model.apply({type: 'epoch_end', seq: seq++, data: {epoch, phase: 'train', metrics: {loss}}});
            model.apply({type: 'training_start', seq: seq++, data: {}});
            ep(0, 1.0); ep(1, 0.8); ep(2, 0.7);
            model.apply({type: 'training_start', seq: seq++, data: {}});
            ep(1, 0.75); ep(2, 0.6);
            const v = model.charts.get('metrics:loss').traces.get('train').view('epoch');
            return {xs: v.xs, ys: v.ys, attempt: model.attempt};
        }"""
    )
    assert got == {"xs": [0, 1, 2, 1, 1, 2], "ys": [1.0, 0.8, 0.7, None, 0.75, 0.6], "attempt": 1}


def test_epoch_counter_follows_the_runs_numbering(page):
    """A run counting epochs from 0 shows epoch+1 of N; one counting from 1 shows its own number."""
    got = page.evaluate(
        """() => [0, 1].map((first) => {
            const model = new M.RunModel('x');
            for (let e = first; e < first + 5; e++) {
                model.apply({type: 'epoch_start', seq: e, data: {epoch: e, total_epochs: 5}});
            }
            return model.epochLabel();
        })"""
    )
    assert got == ["epoch 5/5", "epoch 5/5"]


def test_system_metrics_get_a_line_per_host_rank_and_device(page):
    """system_metrics {host, rank, metrics} land in their own section, a line per host/rank/device."""
    got = page.evaluate(
        """() => {
            const model = new M.RunModel('x');
            let seq = 0;
            for (const [host, rank] of [['n1', 0], ['n2', 1]]) {
                model.apply({type: 'system_metrics', seq: seq++, timestamp: '2025-10-22T11:00:00Z',
                    data: {host, rank, metrics: {cpu_percent: 10 + rank, gpu: {'0': {util: 50}, '1': {util: 60}}}}});
            }
            const out = {};
            for (const [id, c] of model.charts) out[id] = [...c.traces.keys()];
            return out;
        }"""
    )
    assert got == {
        "system:cpu_percent": ["n1 rank 0", "n2 rank 1"],
        "system:gpu.util": ["n1 rank 0 gpu0", "n1 rank 0 gpu1", "n2 rank 1 gpu0", "n2 rank 1 gpu1"],
    }


def test_failed_run_error_reaches_the_model(page):
    """An error message becomes the run's last error with its traceback, and the status turns failed."""
    got = page.evaluate(
        """(frames) => {
            const model = new M.RunModel('x');
            frames.forEach((f) => model.apply(f));
            return {status: model.status, error: model.lastError, kinds: model.timeline.map((e) => e.kind)};
        }""",
        [
            {"type": "training_start", "seq": 0, "data": {}},
            {
                "type": "error",
                "seq": 1,
                "data": {"error": "boom", "error_type": "ValueError", "traceback": "Traceback..."},
            },
            {"type": "status", "seq": 2, "data": {"status": "failed", "message": "boom"}},
        ],
    )
    assert got == {
        "status": "failed",
        "error": {"error": "boom", "type": "ValueError", "traceback": "Traceback..."},
        "kinds": ["training_start", "error", "status"],
    }


def test_client_tagged_values_get_a_line_per_client(page):
    """Batch and logged values that carry a client_id are drawn as one line per client."""
    charts = page.evaluate(
        """() => {
            const model = new M.RunModel('x');
            let seq = 0;
            for (const client of ['18446744073709551615', '7']) {
                for (let step = 0; step < 3; step++) {
                    model.apply({type: 'batch_metrics', seq: seq++,
                        data: {step, loss: 1, client_id: client, round_num: 1}});
                    model.apply({type: 'metrics', seq: seq++,
                        data: {step, client_id: client, metrics: {train_loss: 1}}});
                }
            }
            const out = {};
            for (const [id, c] of model.charts) {
                out[id] = Object.fromEntries([...c.traces].map(([name, s]) => [name, s.length]));
            }
            return out;
        }"""
    )
    assert charts == {
        "metrics:loss": {
            "client 18446744073709551615 train (batch)": 3,
            "client 7 train (batch)": 3,
        },
    }


INDEX_KEY_MESSAGES = [
    {"type": "batch_metrics", "data": {"step": 1, "loss": 0.5, "rank": 1, "num_examples": 32}},
    {
        "type": "epoch_end",
        "data": {
            "epoch": 0,
            "phase": "val",
            "metrics": {"acc": 0.9, "rank": 1, "num_examples": 64},
        },
    },
]


def test_a_value_is_charted_exactly_when_read_metrics_gives_it_a_row(page, tmp_path):
    """The page's index keys are replay's: `rank` indexes a value, `num_examples` is one."""
    import orjson

    import replay

    run = tmp_path / "keys.jsonl"
    run.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in INDEX_KEY_MESSAGES))
    rows = replay.read_metrics(run)
    assert set(rows["metric"]) == {"loss", "acc", "num_examples"}  # not rank
    charts = page.evaluate(
        """(messages) => {
            const model = new M.RunModel('x');
            messages.forEach((m, seq) => model.apply({...m, seq}));
            return [...model.charts.keys()].sort();
        }""",
        INDEX_KEY_MESSAGES,
    )
    assert charts == ["metrics:acc", "metrics:loss", "metrics:num_examples"]
