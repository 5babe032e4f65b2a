"""The writer path both backends share (database.Database for SQLite, pg.PgDatabase for PostgreSQL).

`write(fn, *args)` runs fn(conn, *args) in a transaction and returns its result or raises its error. After
`start_writer()` one thread drains the callers' writes into shared transactions (group commit); `write_async`
batches the writes of one event-loop iteration without a thread hop. A backend implements `_commit(calls)`:
one transaction for the batch, each write undone alone when it fails, answering (ok, value) per call; it never
raises (a failed commit is a StoreError for every call of the batch).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

Call = tuple[Callable[..., Any], tuple]


class GroupCommit:
    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._pending: list = []

    def _commit(self, calls: list[Call]) -> list[tuple[bool, Any]]:
        raise NotImplementedError

    def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(conn, *args) in a transaction (its own savepoint); return its result or raise its error."""
        q = self._queue
        if q is None:
            ok, value = self._commit([(fn, args)])[0]
            if not ok:
                raise value
            return value
        fut: Future = Future()
        q.put((fn, args, fut))
        return fut.result()

    async def write_async(self, fn: Callable[..., Any], *args: Any) -> Any:
        """write() for the event loop: the writes of one loop iteration share one transaction, no thread hop."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((fn, args, fut))
        if len(self._pending) == 1:
            loop.call_soon(self._flush_pending)
        return await fut

    def _flush_pending(self) -> None:
        batch, self._pending = self._pending, []
        results = self._commit([(fn, args) for fn, args, _ in batch])
        for (_, _, fut), (ok, value) in zip(batch, results):
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def start_writer(self) -> None:
        """Group commit: one thread drains queued writes into shared transactions."""
        if self._thread is not None:
            return
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer_loop, name="central-writer", daemon=True)
        self._thread.start()

    def stop_writer(self, timeout: float = 5.0) -> None:
        if self._thread is None or self._queue is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
        self._queue = None

    def _writer_loop(self) -> None:
        q = self._queue
        assert q is not None
        stopping = False
        while not stopping:
            item = q.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            results = self._commit([(fn, args) for fn, args, _ in batch])
            for (_, _, fut), (ok, value) in zip(batch, results):
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
