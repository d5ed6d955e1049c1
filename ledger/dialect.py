"""The few places PostgreSQL and CockroachDB differ, chosen once from `SELECT version()`.

Everything else in `ledger.store` is written in the subset both accept; this module is the only
place that knows which database it is talking to.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

# SQLSTATE 40001: serialization failure. CockroachDB reports every retryable conflict with it
# (its messages start with "restart transaction"); PostgreSQL SERIALIZABLE uses it too, and
# 40P01 (deadlock detected) and 55P03 (lock_timeout: the head lock was held too long, for
# example by a paused process) are retried the same way: nothing was written.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str  # "postgresql" or "cockroachdb"

    @property
    def connection_class(self) -> type[psycopg.AsyncConnection]:
        if self.name == "cockroachdb":
            from psycopg import crdb

            return crdb.AsyncCrdbConnection
        return psycopg.AsyncConnection

    def batch_lock(self) -> str | None:
        """The statement a commit batch runs first, before anything takes a snapshot.

        On PostgreSQL SERIALIZABLE the snapshot is taken by the first query; a batch that then
        waits for the head row lock held by another process's batch fails with 40001 once that
        batch commits (measured: 0.6 retries per batch with two API processes). LOCK TABLE takes
        no snapshot (PostgreSQL's documented recipe), so the batch waits its turn first and its
        reads then see the winner's writes: SERIALIZABLE, without the retry storm. Plain reads
        (ACCESS SHARE) are not blocked by EXCLUSIVE mode. CockroachDB has no LOCK TABLE and needs
        none: its SELECT FOR UPDATE waits and the transaction refreshes its read timestamp."""
        if self.name == "cockroachdb":
            return None
        return "LOCK TABLE journal_head IN EXCLUSIVE MODE"

    def relaxed_commit(self) -> str | None:
        """The statement that lets a transaction commit without waiting for its WAL flush, for
        writes whose loss in a crash costs nothing but repeated work (the publisher cursor: a lost
        advance republishes a few events, which JetStream and the consumers drop as repeats).
        CockroachDB has no such switch; its commit stays as it is."""
        if self.name == "cockroachdb":
            return None
        return "SET LOCAL synchronous_commit = off"

    def relaxed_session(self) -> str | None:
        """`relaxed_commit` for every transaction of a connection: for a process whose every write
        is derived from the journal and moves its own checkpoint in the same transaction (the
        projector's read models, the webhook worker's deliveries), so a crash that loses its
        last commits only makes it do them again from the journal. Its commits then no longer wait
        for, or queue behind, WAL flushes, and no longer delay the committer's flush."""
        if self.name == "cockroachdb":
            return None
        return "SET synchronous_commit = off"

    def standby_probe(self) -> str | None:
        """The statement that makes its transaction's COMMIT wait until the synchronous standby has
        flushed it, and so everything committed before it (`ledger.standby`): a transactional
        WAL record (an empty logical message; any role may emit one, at any `wal_level`), with
        `synchronous_commit` back on for a relaxed session. With no synchronous standby named it
        writes nothing and the COMMIT waits for nothing. CockroachDB needs none: a write it
        acknowledges is on a quorum of replicas, and a read sees only such writes."""
        if self.name == "cockroachdb":
            return None
        return ("SELECT set_config('synchronous_commit', 'on', true), pg_logical_emit_message(true, 'ledger.standby', '')"
                " WHERE current_setting('synchronous_standby_names') <> ''")

    def snapshot_begin(self) -> str:
        """How the audit opens one consistent, read-only snapshot of the whole journal."""
        if self.name == "cockroachdb":
            return "BEGIN AS OF SYSTEM TIME follower_read_timestamp()"
        return "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    def snapshot_token(self) -> str:
        """The query whose one value names the audit's snapshot, so that the audit's worker
        processes read exactly what it reads. PostgreSQL exports the open snapshot (run inside
        it); CockroachDB names a time, read before the snapshot opens at it (`snapshot_join`)."""
        if self.name == "cockroachdb":
            return "SELECT follower_read_timestamp()::STRING"
        return "SELECT pg_export_snapshot()"

    @property
    def snapshot_token_first(self) -> bool:
        """Whether `snapshot_token` is read before the audit's own snapshot opens (at the time it names)."""
        return self.name == "cockroachdb"

    def snapshot_join(self, token: str) -> list[sql.Composable]:
        """The statements that open a read-only snapshot equal to the one `token` names."""
        if self.name == "cockroachdb":
            return [sql.SQL("BEGIN AS OF SYSTEM TIME {}").format(sql.Literal(token))]
        return [sql.SQL(self.snapshot_begin()), sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(token))]

    def journal_index_ddl(self) -> str:
        """Sequential positions would pile every insert onto one range in CockroachDB; a
        hash-sharded secondary index spreads reads by position without changing the key."""
        if self.name == "cockroachdb":
            return "CREATE INDEX IF NOT EXISTS journal_position_sharded ON journal (position) USING HASH"
        return ""

    def metadata_index_ddl(self) -> str:
        """The inverted index that answers a search's `metadata @> {...}` (ledger/store/search.py).
        PostgreSQL's `jsonb_path_ops` makes one entry per key/value pair (its default class makes
        one per key and one per value, twice the entries, and a common key's list is then read
        for every search); `fastupdate = off` inserts each entry at commit instead of queueing it
        in a pending list that every search would scan and that some commit would pay to merge.
        CockroachDB has one JSONB inverted index, keyed on pairs already."""
        if self.name == "cockroachdb":
            return "CREATE INDEX IF NOT EXISTS journal_by_metadata ON journal USING GIN (metadata)"
        return ("CREATE INDEX IF NOT EXISTS journal_by_metadata ON journal USING GIN (metadata jsonb_path_ops)"
                " WITH (fastupdate = off)")


POSTGRESQL = Dialect("postgresql")
COCKROACHDB = Dialect("cockroachdb")


def from_version(version: str) -> Dialect:
    return COCKROACHDB if "CockroachDB" in version else POSTGRESQL


def is_retryable(error: BaseException) -> bool:
    sqlstate = getattr(error, "sqlstate", None)
    return sqlstate in RETRYABLE_SQLSTATES or "restart transaction" in str(error)
