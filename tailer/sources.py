"""Where a :class:`~tailer.server.TailerServer`'s runs come from.

The server speaks HTTP and WebSocket; a *source* says which runs exist and
what a connection receives. Two sources exist:

- :class:`LiveDirectory` (``tailer serve DIR``): every run file of a watched
  directory, streamed live by a :class:`~tailer.fanout.DirectoryFanout`, with
  history after ``since`` and cookie sessions on ``/`` (DESIGN §11);
- :class:`PacedReplay` (``tailer replay FILE``): one finished run, replayed
  from the start to each connection at its recorded pace.

Both implement :class:`RunSource`, everything the server asks of a source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from websockets.asyncio.server import ServerConnection

from recorder.format import named_file_id, run_file_name, validate_experiment_id
from tailer import identities
from tailer.fanout import Client, DirectoryFanout
from tailer.reader import FileReader
from tailer.routes import RequestError, Route, parse_speed
from tailer.sessions import SessionClient, SessionStore
from tailer.watcher import watch_directory

__all__ = ["LiveDirectory", "PacedReplay", "RunSource", "stream_paced_replay"]

log = logging.getLogger("tailer")


class RunSource(Protocol):
    """What the server needs from where its runs come from."""

    @property
    def sessions(self) -> SessionStore | None:
        """Cookie sessions on ``/`` (DESIGN §11); ``None`` where the source has none."""
        ...

    def summaries(self) -> list[dict[str, object]]:
        """The ``/api/experiments`` list."""
        ...

    def run_files(self) -> list[Path]:
        """The files ``/api/metrics`` and ``/api/hparams`` may read: the listed runs, no other."""
        ...

    def reader(self, experiment_id: str) -> FileReader | None:
        """The reader of a run being served (``/api/series``), or ``None``."""
        ...

    def resolve(self, route: Route, query: dict[str, list[str]]) -> Route:
        """The route a WebSocket request gets here; :class:`RequestError` if none."""
        ...

    async def stream(self, client: Client, route: Route) -> None:
        """Send ``route`` to ``client`` until either side is done (the connection may be open)."""
        ...

    def detach(self, client: Client) -> None:
        """``client``'s connection ended: forget it."""
        ...


class LiveDirectory:
    """``tailer serve DIR``: the fanout's runs, live, with history from disk.

    Made by :meth:`open`, which reads the files there; :meth:`watching` then
    follows the directory until its block exits.
    """

    def __init__(
        self,
        fanout: DirectoryFanout,
        sessions: SessionStore,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.fanout = fanout
        self.sessions = sessions
        #: Where the fanout's identities are kept across restarts (:mod:`tailer.identities`).
        self.state_dir = state_dir

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        queue_bytes: int,
        index_every: int,
        follow_symlinks: bool,
        state_dir: str | os.PathLike[str] | None,
        sessions: SessionStore,
    ) -> LiveDirectory:
        """The runs in ``directory``, read up to the start-up budget (the rest goes on later)."""
        fanout = DirectoryFanout(
            directory,
            queue_bytes=queue_bytes,
            index_every=index_every,
            follow_symlinks=follow_symlinks,
        )
        if state_dir is not None:
            fanout.checkpoints = identities.load(state_dir)
        await fanout.refresh(startup=True)
        fanout.checkpoints.clear()  # files deleted while no tailer ran: nothing to compare
        log.info("found %d experiment(s) in %s", len(fanout.readers), directory)
        return cls(fanout, sessions, state_dir)

    @contextlib.asynccontextmanager
    async def watching(
        self, *, poll: bool, scan_interval: float, poll_interval: float
    ) -> AsyncIterator[None]:
        """Follow the directory (and save the identities) until the block exits."""
        fanout = self.fanout

        async def changed(ids: set[str] | None) -> None:
            await fanout.refresh(ids)

        watcher = asyncio.create_task(
            watch_directory(
                fanout.directory,
                changed,
                poll=poll,
                scan_interval=scan_interval,
                poll_interval=poll_interval,
                at_once=fanout.refresh_now,
            )
        )
        # The watcher's first step registers the inotify watch; then one more read picks up
        # whatever was appended between the initial read and that moment.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await fanout.refresh()
        state_dir = self.state_dir
        keeper = (
            asyncio.create_task(identities.keep(fanout, state_dir))
            if state_dir is not None
            else None
        )
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await fanout.close()
            if keeper is not None:  # saves where every file was read to, one last time
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper

    def summaries(self) -> list[dict[str, object]]:
        return self.fanout.summaries()

    def run_files(self) -> list[Path]:
        return [
            self.fanout.directory / run_file_name(str(s["experiment_id"]))
            for s in self.fanout.summaries()
        ]

    def reader(self, experiment_id: str) -> FileReader | None:
        return self.fanout.readers.get(experiment_id)

    def resolve(self, route: Route, query: dict[str, list[str]]) -> Route:
        if route.kind == "replay":
            reader = self.fanout.readers.get(route.experiment_id or "")
            if reader is None or not reader.exists:  # never a link out of DIR, a FIFO...
                raise RequestError(404, "no such experiment")
        return route

    async def stream(self, client: Client, route: Route) -> None:
        fanout = self.fanout
        if route.kind == "replay":
            assert route.experiment_id is not None
            path = fanout.directory / run_file_name(route.experiment_id)
            await stream_paced_replay(client.connection, path, route)
            return
        if isinstance(client, SessionClient):
            await self.sessions.attach(fanout, client, route)
        elif route.kind == "firehose" and route.experiment_id is None:
            fanout.subscribe_firehose(client)
        else:
            assert route.experiment_id is not None
            await fanout.attach(client, route.experiment_id, route.since)
        await client.connection.wait_closed()

    def detach(self, client: Client) -> None:
        self.fanout.unsubscribe(client)
        if isinstance(client, SessionClient):
            self.sessions.detach(client)


class PacedReplay:
    """``tailer replay FILE``: one finished run, replayed to each connection from the start."""

    sessions = None

    def __init__(self, path: Path, *, speed: float = 1.0, max_gap: float | None = None) -> None:
        self.path = path
        self.speed = speed
        self.max_gap = max_gap
        self.experiment_id = validate_experiment_id(named_file_id(path.name))
        #: Read once at start: the summary and ``/api/series`` of the run.
        self.run_reader = FileReader(path, self.experiment_id)
        self.run_reader.read_all()

    def summaries(self) -> list[dict[str, object]]:
        return [self.run_reader.summary()]

    def run_files(self) -> list[Path]:
        return [self.path]

    def reader(self, experiment_id: str) -> FileReader | None:
        return self.run_reader if experiment_id == self.experiment_id else None

    def resolve(self, route: Route, query: dict[str, list[str]]) -> Route:
        # `/` (and `?experiment=<its id>`) replays the file at the command's pace, as does
        # `/experiments/<its id>` so the dashboard's run view works;
        # `/experiments/<its id>/replay?speed=S` picks its own pace. Each connection
        # starts from the beginning (`since` does not apply to a replay).
        replay_id = self.experiment_id
        if route.experiment_id in (None, replay_id) and route.kind in ("firehose", "experiment"):
            speed = query.get("speed")
            return Route(
                "replay",
                replay_id,
                speed=parse_speed(speed[-1]) if speed else self.speed,
                max_gap=self.max_gap,
                # `/` stays open after the run: the unmodified React client reconnects
                # on every close and would replay the run again and again (§11).
                stay_open=route.kind == "firehose",
            )
        if route.kind == "replay" and route.experiment_id == replay_id:
            return route
        raise RequestError(404, "no such experiment")

    async def stream(self, client: Client, route: Route) -> None:
        await stream_paced_replay(client.connection, self.path, route)

    def detach(self, client: Client) -> None:
        pass


async def stream_paced_replay(connection: ServerConnection, path: Path, route: Route) -> None:
    """Send ``path`` to ``connection`` at the pace ``route`` asks, then close or wait."""
    try:
        from replay.pacing import paced_frames
    except ImportError:
        await connection.close(1011, "replay is not available in this installation")
        return
    assert route.experiment_id is not None
    frames = paced_frames(
        path, experiment_id=route.experiment_id, speed=route.speed, max_gap=route.max_gap
    )
    try:
        async for frame in frames:
            await connection.send(frame, text=True)
    except OSError as exc:  # gone, or no longer a regular file (a FIFO swapped in)
        log.warning("cannot replay %s: %s", route.experiment_id, exc)
        await connection.close(1011, "cannot read the run file")
        return
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()
    if route.stay_open:
        await connection.wait_closed()  # pings are still answered by the server's receiver
    else:
        await connection.close(1000, "replay finished")
