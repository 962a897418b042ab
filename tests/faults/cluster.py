"""What the fault tests drive: two `arbiter serve` processes and an `arbiter worker` on
PostgreSQL and a private Redis the test may stop or kill; clients that keep predicting
(retrying what a fault refused, with the same idempotency key) and record what was
acknowledged; a raw graphql-transport-ws subscriber."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets

from app.settings import Settings
from tests.support.processes import ARBITER, wait_ready
from tests.support.server import free_port
from tests.support.subscriber import ws_url

WAIT_SECONDS = 120
# A prediction no server answers in this long is recorded as hung (and retried elsewhere):
# far above any answer under these faults, well below WAIT_SECONDS so the test says which.
REQUEST_SECONDS = 30
PREDICT = """mutation($i: JSON!, $k: String) {
  predict(task: "loan_default", input: $i, idempotencyKey: $k) { id } }"""
RETRYABLE = "SERVICE_UNAVAILABLE"


class Cluster:
    """Servers on fixed ports (a killed one comes back on the same) and one worker."""

    def __init__(self, env: dict[str, str], servers: int = 2) -> None:
        self.env = env
        self.ports = [free_port() for _ in range(servers)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.worker: subprocess.Popen[bytes] | None = None
        self.spawned = 0

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        # Each process's log kept in the data dir: an INTERNAL_ERROR's id leads to it there.
        self.spawned += 1
        path = Path(self.env["ARBITER_DATA_DIR"]) / f"{args[0]}-{self.spawned}.log"
        with path.open("ab") as log:
            return subprocess.Popen([ARBITER, *args], env=self.env, stdout=log, stderr=log)

    def __enter__(self) -> Cluster:
        self.procs = [self._spawn("serve", "--port", str(p)) for p in self.ports]
        self.worker = self._spawn("worker")
        for url, proc in zip(self.urls, self.procs, strict=True):
            wait_ready(url, proc)
        return self

    def kill_server(self, n: int) -> None:
        self.procs[n].kill()
        self.procs[n].wait(timeout=30)

    def restart_server(self, n: int) -> None:
        self.procs[n] = self._spawn("serve", "--port", str(self.ports[n]))
        wait_ready(self.urls[n], self.procs[n])

    def __exit__(self, *_: object) -> None:
        for proc in [*self.procs, *([self.worker] if self.worker else [])]:
            proc.terminate()
        for proc in [*self.procs, *([self.worker] if self.worker else [])]:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)

    def readyz(self, n: int) -> httpx.Response:
        return httpx.get(f"{self.urls[n]}/readyz", timeout=30)


def retryable(response: httpx.Response | None) -> bool:
    """No answer (the server died), or an answer that says "retry"."""
    if response is None:
        return True
    body = response.json()
    return any(e.get("extensions", {}).get("code") == RETRYABLE
               for e in body.get("errors") or ())


class Load:
    """``clients`` threads predicting on the cluster's servers in turn; each request is
    retried (on the next server, same idempotency key) until acknowledged."""

    def __init__(self, urls: list[str], key: str, rows: list[dict[str, Any]],
                 clients: int = 4) -> None:
        self.urls = urls
        self.key = key
        self.rows = rows
        self.clients = clients
        self.acked: dict[str, str] = {}  # idempotency key -> prediction id
        self.retries = 0
        self.unexpected: list[str] = []  # answers neither acknowledged nor retryable
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.last_retry = "none"
        self.hung: list[str] = []  # requests no answer came to in REQUEST_SECONDS

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WAIT_SECONDS)

    def _client(self, n: int) -> None:
        servers = itertools.cycle(self.urls[n % len(self.urls):] + self.urls[:n % len(self.urls)])
        with httpx.Client(timeout=REQUEST_SECONDS,
                          headers={"Authorization": f"Bearer {self.key}"}) as http:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                self._until_acked(http, servers, f"c{n}-{i}", self.rows[i % len(self.rows)])

    def _until_acked(self, http: httpx.Client, servers: Iterator[str], key: str,
                     row: dict[str, Any]) -> None:
        while True:
            response, server = None, next(servers)
            try:
                response = http.post(f"{server}/graphql",
                                     json={"query": PREDICT, "variables": {"i": row, "k": key}})
            except httpx.TimeoutException:
                with self._lock:
                    self.hung.append(f"{key} on {server}")
            except httpx.TransportError:
                pass
            if response is not None and response.status_code == 200 and not retryable(response):
                body = response.json()
                with self._lock:
                    if body.get("data"):
                        self.acked[key] = body["data"]["predict"]["id"]
                    else:
                        self.unexpected.append(response.text)
                return
            if response is not None and response.status_code not in (200, 503):
                with self._lock:
                    self.unexpected.append(f"{response.status_code} {response.text}")
                return
            with self._lock:
                self.retries += 1
                self.last_retry = ("no answer" if response is None
                                   else f"{response.status_code} {response.text[:300]}")
            time.sleep(0.1)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def flowing(self, more: int = 20) -> None:
        """Wait until ``more`` further predictions are acknowledged (no timing asserted:
        the bound is only there so a stuck cluster fails instead of hanging)."""
        target = self.count() + more
        deadline = time.monotonic() + WAIT_SECONDS
        while self.count() < target:
            assert time.monotonic() < deadline, (
                f"predictions stopped at {self.count()} after {self.retries} retries; "
                f"the last retried answer: {self.last_retry}; hung requests: {self.hung}")
            time.sleep(0.05)


def wait_until(condition: Any, what: str) -> Any:
    """The condition's first truthy value (bounded, not timed)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)
    return value


def database(settings: Settings, sql: str) -> list[Any]:
    """Rows of one query on the test's PostgreSQL database."""
    dsn = settings.resolved_database_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def check_stored_once(settings: Settings, load: Load) -> None:
    """Acknowledged = stored, once; every stored prediction has its audit event."""
    stored = {r["idempotency_key"]: r["id"] for r in database(
        settings, "SELECT idempotency_key, id FROM predictions")}
    # (a helper module: pytest does not rewrite its asserts, so each says what it saw)
    assert stored == load.acked, (  # each key once (the column is unique), each acked one
        f"stored not acked: {sorted(set(stored) - set(load.acked))[:5]}; acked not stored: "
        f"{sorted(set(load.acked) - set(stored))[:5]}")
    audited = {r["subject_id"] for r in database(
        settings, "SELECT subject_id FROM audit_events WHERE kind = 'prediction.made'")}
    assert audited == set(stored.values()), sorted(audited ^ set(stored.values()))[:5]
    ids = re.findall(r'"errorId":"(\w+)"', " ".join(load.unexpected))
    logged = [line[-3000:] for log in sorted(settings.data_dir.glob("*.log"))
              for line in log.read_text(errors="replace").splitlines()
              if any(i in line for i in ids)]
    assert load.unexpected == [], f"{len(load.unexpected)} unexpected answers, first: " \
        f"{load.unexpected[:3]}; the servers' log lines of their error ids: {logged[:3]}"
    assert load.hung == [], f"requests no server answered in {REQUEST_SECONDS} s"


def live_subscriber(url: str, key: str) -> Subscriber:
    """A subscriber that has received an event. One opened just after an outage may be
    told EVENTS_MISSED for it first: like a client, subscribe again then."""
    for _ in range(10):
        subscriber = Subscriber(url, key).start()
        wait_until(lambda s=subscriber: s.received or s.ended, "an event or an end")
        if subscriber.received:
            return subscriber
    raise AssertionError(f"every subscription ended: {subscriber.ended}")


class Subscriber:
    """A websocket subscription to loan_default predictions, read on a thread of its own;
    ``ended`` holds the error codes it ended with."""

    QUERY = 'subscription { predictions(task: "loan_default") { id } }'

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = ws_url(url), key
        self.received = 0
        self.ended: list[str] = []
        self._thread = threading.Thread(target=self._main, daemon=True)

    def live(self) -> bool:
        """Has it received an event yet?"""
        return self.received > 0

    def start(self) -> Subscriber:
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # the test sees it in ``ended`` instead of waiting forever
            self.ended = [f"failed: {exc!r}"]

    async def _run(self) -> None:
        async with websockets.connect(self.url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"Authorization": f"Bearer {self.key}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                      "payload": {"query": self.QUERY}}))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), WAIT_SECONDS * 3))
                if message["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif message["type"] == "next":
                    if message["payload"].get("errors"):
                        self.ended = [e["extensions"]["code"]
                                      for e in message["payload"]["errors"]]
                        return
                    self.received += 1
                elif message["type"] in ("error", "complete"):
                    self.ended = [e.get("extensions", {}).get("code", "?")
                                  for e in message.get("payload") or [{}]]
                    return
