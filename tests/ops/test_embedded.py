"""Smoke tests: the embedded servers start, survive SIGKILL and keep their data."""

import socket
from pathlib import Path

import psycopg
import pytest

from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port

pytestmark = pytest.mark.slow  # child processes: servers killed and started again


def test_postgres_survives_kill(tmp_path: Path) -> None:
    with EmbeddedPostgres(data_dir=tmp_path / "pg", port=free_port()) as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (42)")
        pg.kill()
        assert not pg.running
        pg.start()  # over the stale postmaster.pid, with crash recovery
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("select x from t").fetchall() == [(42,)]
    assert not pg.running


def _info_line(url_port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", url_port), timeout=5) as sock:
        return sock.makefile("rb").readline()


def test_nats_survives_kill(tmp_path: Path) -> None:
    with EmbeddedNats(data_dir=tmp_path / "nats", port=free_port()) as nats:
        assert _info_line(nats.port).startswith(b"INFO ")
        nats.kill()
        assert not nats.running
        nats.start()
        assert _info_line(nats.port).startswith(b"INFO ")
    assert not nats.running
