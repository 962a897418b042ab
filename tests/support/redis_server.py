"""A private redis-server on a free port, which a test may kill and start again (the
shared Redis on 6379 serves other tests and is never stopped)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import redis

from tests.support.databases import IN_CI
from tests.support.server import free_port

REDIS_URL = os.environ.get("ARBITER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis() -> None:
    """Skip the test when the shared Redis is absent locally; fail it under CI=true."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        message = f"Redis is not reachable at {REDIS_URL} ({exc})"
        if IN_CI:
            pytest.fail(f"{message}; CI=true requires it (.ci/run starts it)")
        pytest.skip(message)


class RedisServer:
    """``redis-server`` without persistence; ``kill`` is SIGKILL, ``start`` the same port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed (needed to restart Redis in a test)"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self._answers():
            assert time.monotonic() < deadline, "redis-server did not start"
            assert self.proc.poll() is None, f"redis-server exited (port {self.port} taken?)"
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        with redis.Redis.from_url(self.url, socket_timeout=1) as client:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


    def pause(self) -> None:
        """SIGSTOP: Redis keeps its sockets open and answers nothing (a hung server)."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
