"""The audit: an honest journal passes, and every tamper is caught at the position it was made.

Tampering happens directly in the database as the superuser, in a database of the test's own
(created on the session's server and dropped after), because the shared one must keep auditing
clean for every other test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import stat
import sys
import uuid
from pathlib import Path

import msgspec
import psycopg
import pytest

import schemas
from ledger import db, domain, store
import audit
from audit import pool as audit_pool
from ledger.store import audit as audit_reads
from proofs import command, signing
from tools.seed import seed_journal
from projector import store as projections
from tests.conftest import eventually
from tests.plugins.journals import SEEDED_ENTRIES, execute, first_failure

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
JOURNAL_PAGE_LIMIT = 10_000  # the contract's largest `limit` on GET /v1/journal
TEMPORARY_POSITION = 1_000_000_000  # a free position to park a row on while swapping two


# ---- fixtures and helpers -------------------------------------------------------------------


async def all_entries(url: str) -> list[schemas.JournalEntry]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await store.entries_after(conn, 0, JOURNAL_PAGE_LIMIT)


async def rewrite_history(url: str, position: int, **changes) -> None:
    """Edit the entry at `position` and recompute every hash from it on, head included: a
    rewrite that leaves the chain itself consistent."""
    entries = await all_entries(url)
    prev_hash = entries[position - 2].hash if position > 1 else domain.ZERO_HASH
    statements = []
    for entry in entries[position - 1:]:
        edited = msgspec.structs.replace(entry, prev_hash=prev_hash, **(changes if entry.position == position else {}))
        digest = domain.recompute_hash(edited)
        statements.append((
            "UPDATE journal SET reference = %s, amount = %s, prev_hash = %s, hash = %s WHERE position = %s",
            (edited.reference, edited.amount, prev_hash, digest, entry.position),
        ))
        statements += [
            ("UPDATE postings SET amount = %s WHERE position = %s AND account_id = %s",
             (posting.amount, entry.position, posting.account_id))
            for posting in edited.postings
        ]
        prev_hash = digest
    statements.append(("UPDATE journal_head SET hash = %s WHERE id = 1", (prev_hash,)))
    await execute(url, *statements)


def failed_checks(report: audit.AuditReport) -> set[str]:
    return {check.name for check in report.checks if not check.ok}


def verdict(report: audit.AuditReport) -> tuple:
    """Everything a report says about the journal (not how fast it was read)."""
    return (report.ok, report.first_failure, report.checks, report.entries, report.last_position, report.accounts)


RANGE_ENTRIES_SMALL = 7  # positions per worker range: a 50-entry journal then spans eight ranges


async def audit_both(url: str, **options) -> audit.AuditReport:
    """`run_audit` in the audit's process alone, and again with worker processes over small ranges
    (where plain ranges are summarized): both must reach the same verdict, whatever the tamper."""
    alone = await audit.run_audit(url, workers=0, **options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audit_pool, "AUDIT_RANGE_ENTRIES", RANGE_ENTRIES_SMALL)
        with_workers = await audit.run_audit(url, workers=2, **options)
    assert verdict(with_workers) == verdict(alone)
    return alone


# ---- honest journals ------------------------------------------------------------------------


async def test_an_honest_journal_written_through_the_api_audits_clean(stack):
    wallet = await stack.funded_wallet(1000)
    vendor = await stack.vendor()
    for amount in (100, 250, 5):
        assert (await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, amount)).status == 201

    async def projector_caught_up() -> bool:
        async with await stack.superuser() as conn:
            head = (await store.journal_head(conn)).position
            return await projections.cursor(conn, stack.settings.projector.name) >= head

    await eventually(projector_caught_up)
    report = await audit.run_audit(stack.database_url, projector_name=stack.settings.projector.name)
    assert report.ok, report.first_failure
    assert failed_checks(report) == set()
    assert report.entries == report.last_position == report.head_position >= 4
    assert report.projector_position == report.last_position


async def test_a_seeded_journal_continued_twice_audits_clean(own_database):
    await seed_journal(own_database, entries=30, accounts=5)
    await seed_journal(own_database, entries=21, accounts=5, batch=4)
    report = await audit.run_audit(own_database)
    assert report.ok, report.first_failure
    assert (report.entries, report.last_position, report.accounts) == (51, 51, 10)


async def test_a_projection_exact_at_its_checkpoint_passes_while_the_journal_is_ahead(seeded):
    async with await psycopg.AsyncConnection.connect(seeded) as conn:
        entries = await store.entries_after(conn, 0, 30)
        await projections.apply_entries(conn, entries, name="main", projected_at=dt.datetime.now(dt.timezone.utc))
    report = await audit_both(seeded)
    assert report.ok, report.first_failure
    assert (report.projector_position, report.last_position) == (30, SEEDED_ENTRIES)


async def test_audit_from_a_position_trusts_the_entries_up_to_it(seeded):
    await execute(seeded, ("UPDATE journal SET reference = 'edited' WHERE position = 10", ()))
    assert first_failure(await audit_both(seeded)) == (10, "hash")
    report = await audit_both(seeded, from_position=20)
    assert report.ok, report.first_failure
    assert report.entries == SEEDED_ENTRIES - 20


# ---- tampering, caught and located ----------------------------------------------------------


async def test_a_posting_changed_with_its_twin_is_caught_at_its_position(seeded):
    await execute(
        seeded,
        ("UPDATE postings SET amount = amount - 7 WHERE position = 20 AND amount < 0", ()),
        ("UPDATE postings SET amount = amount + 7 WHERE position = 20 AND amount > 0", ()),
    )
    report = await audit_both(seeded)
    assert first_failure(report) == (20, "hash")
    assert {"hash", "postings", "write_model"} <= failed_checks(report)
    postings = next(check for check in report.checks if check.name == "postings")
    assert postings.first is not None and postings.first.position == 20


async def test_a_posting_changed_alone_breaks_the_sum_and_conservation(seeded):
    await execute(seeded, ("UPDATE postings SET amount = amount + 1 WHERE position = 33 AND amount > 0", ()))
    report = await audit_both(seeded)
    assert first_failure(report) == (33, "hash")
    assert {"postings", "conservation"} <= failed_checks(report)


async def test_a_deleted_entry_is_caught_at_its_position(seeded):
    await execute(
        seeded,
        ("DELETE FROM postings WHERE position = 25", ()),
        ("DELETE FROM journal WHERE position = 25", ()),
    )
    report = await audit_both(seeded)
    assert first_failure(report) == (25, "contiguous")
    assert report.first_failure.detail == "position 25 missing"


async def test_a_deleted_last_entry_is_caught_by_the_head(seeded):
    await execute(
        seeded,
        ("DELETE FROM postings WHERE position = %s", (SEEDED_ENTRIES,)),
        ("DELETE FROM journal WHERE position = %s", (SEEDED_ENTRIES,)),
    )
    assert first_failure(await audit_both(seeded)) == (SEEDED_ENTRIES, "head")


async def test_two_swapped_entries_are_caught_at_the_first(seeded):
    moves = [(10, TEMPORARY_POSITION), (30, 10), (TEMPORARY_POSITION, 30)]
    await execute(seeded, *[
        (f"UPDATE {table} SET position = %s WHERE position = %s", (target, source))
        for source, target in moves for table in ("journal", "postings")
    ])
    report = await audit_both(seeded)
    assert first_failure(report) == (10, "chain")
    assert {"chain", "hash"} <= failed_checks(report)


async def test_a_rehashed_overdraft_is_caught_at_its_position(seeded):
    # Position 2 is a wallet paying a vendor what position 1 funded it with; a rewrite asking
    # one unit more overdraws the wallet, however consistent the rehashed chain is.
    entry = (await all_entries(seeded))[1]
    more = entry.amount + 1
    overdrawn = [schemas.Posting(entry.from_account_id, -more), schemas.Posting(entry.to_account_id, more)]
    await rewrite_history(seeded, 2, amount=more, postings=overdrawn)
    report = await audit_both(seeded)
    assert first_failure(report) == (2, "non_negative")
    assert not {"chain", "hash", "head"} & failed_checks(report)


async def test_postings_left_without_their_entry_are_caught(seeded):
    await execute(seeded, ("DELETE FROM journal WHERE position = 40", ()))
    report = await audit_both(seeded)
    assert first_failure(report) == (40, "contiguous")
    orphans = next(check for check in report.checks if check.name == "orphan_postings")
    assert orphans.first is not None and orphans.first.position == 40


async def test_a_write_model_balance_that_drifted_is_caught(seeded):
    await execute(seeded, ("UPDATE balances SET balance = balance + 5 WHERE kind = 'vendor'", ()))
    report = await audit_both(seeded)
    assert first_failure(report) == (SEEDED_ENTRIES, "write_model")
    assert failed_checks(report) == {"write_model"}


async def test_a_projection_that_drifted_is_caught_at_its_checkpoint(seeded):
    async with await psycopg.AsyncConnection.connect(seeded) as conn:
        entries = await store.entries_after(conn, 0, 30)
        await projections.apply_entries(conn, entries, name="main", projected_at=dt.datetime.now(dt.timezone.utc))
        await conn.execute("UPDATE projected_balances SET balance = balance + 1 WHERE account_id = %s",
                           (entries[0].to_account_id,))
    report = await audit_both(seeded)
    assert first_failure(report) == (30, "projection")
    assert failed_checks(report) == {"projection"}


async def _project(url: str, count: int) -> list[schemas.JournalEntry]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        entries = await store.entries_after(conn, 0, count)
        await projections.apply_entries(conn, entries, name="main", projected_at=dt.datetime.now(dt.timezone.utc))
    return entries


async def test_a_projection_with_its_verifications_intact_audits_clean(seeded):
    await _project(seeded, 30)
    report = await audit_both(seeded)
    assert report.ok, report.first_failure


async def test_a_deleted_verification_is_caught_at_its_payment(seeded):
    entries = await _project(seeded, 30)
    async with await psycopg.AsyncConnection.connect(seeded) as conn:
        victim = (await projections.verifications(conn))[0]
        await conn.execute("DELETE FROM verifications WHERE transfer_id = %s", (victim.transfer_id,))
    report = await audit_both(seeded)
    assert first_failure(report) == (victim.position, "verifications")
    assert failed_checks(report) == {"verifications"}
    assert victim.position <= entries[-1].position


async def test_a_forged_verification_of_no_entry_is_caught(seeded):
    await _project(seeded, 30)
    paid = (await projections_rows(seeded))[0]
    await execute(seeded, (
        "INSERT INTO verifications (transfer_id, vendor_account_id, position, payer_account_id, amount, currency,"
        " reference, committed_at, hash, projected_at) VALUES (%s, %s, %s, %s, 7, 'USD', '', '', '', now())",
        (uuid.uuid4(), paid.vendor_account_id, 10**9, paid.payer_account_id),
    ))
    report = await audit_both(seeded)
    assert first_failure(report) == (10**9, "verifications")
    assert failed_checks(report) == {"verifications"}


async def projections_rows(url: str) -> list[schemas.Verification]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await projections.verifications(conn)


# ---- signed checkpoints ---------------------------------------------------------------------


async def test_a_rehashed_history_passes_every_check_without_a_checkpoint(seeded):
    await rewrite_history(seeded, 20, reference="rewritten")
    report = await audit_both(seeded)
    assert report.ok, report.first_failure


async def test_a_checkpoint_signed_before_a_rehash_catches_it(seeded, tmp_path):
    signed = await command.take_signed_head(seeded, signing.load_or_create_key(tmp_path / "key.pem"))
    assert (await audit_both(seeded, signed_head=signed, public_key=signed.public_key)).ok
    await seed_journal(seeded, entries=10, accounts=3)
    await rewrite_history(seeded, 20, reference="rewritten")
    report = await audit_both(seeded, signed_head=signed, public_key=signed.public_key)
    # A consistent rewrite leaves no trace of where it began: the checkpoint bounds it.
    assert first_failure(report) == (SEEDED_ENTRIES, "checkpoint")
    assert failed_checks(report) == {"checkpoint"}
    assert f"at or before {SEEDED_ENTRIES}" in report.first_failure.detail


async def test_a_checkpoint_whose_hash_was_edited_does_not_verify(seeded, tmp_path):
    signed = await command.take_signed_head(seeded, signing.load_or_create_key(tmp_path / "key.pem"))
    forged = signing.SignedHead(**{**msgspec.structs.asdict(signed), "hash": "f" * 64})
    report = await audit_both(seeded, signed_head=forged, public_key=signed.public_key)
    assert first_failure(report) == (SEEDED_ENTRIES, "checkpoint")
    assert report.first_failure.detail == "the signature does not verify"


async def test_a_checkpoint_beyond_a_truncated_journal_is_caught(seeded, tmp_path):
    signed = await command.take_signed_head(seeded, signing.load_or_create_key(tmp_path / "key.pem"))
    await execute(
        seeded,
        ("DELETE FROM postings WHERE position > 45", ()),
        ("DELETE FROM journal WHERE position > 45", ()),
        ("UPDATE journal_head SET position = 45, hash = (SELECT hash FROM journal WHERE position = 45)", ()),
        ("UPDATE balances SET balance = s.total FROM (SELECT a.id, coalesce(sum(p.amount), 0) AS total"
         " FROM accounts a LEFT JOIN postings p ON p.account_id = a.id GROUP BY a.id) s"
         " WHERE balances.account_id = s.id", ()),
    )
    report = await audit_both(seeded, signed_head=signed, public_key=signed.public_key)
    assert first_failure(report) == (SEEDED_ENTRIES, "checkpoint")
    assert failed_checks(report) == {"checkpoint"}


@pytest.mark.slow  # child processes: the `ledger checkpoint` and `ledger audit` commands
async def test_the_checkpoint_command_signs_the_head_and_the_audit_command_proves_it(seeded, tmp_path):
    key, out = tmp_path / "keys" / "signing.pem", tmp_path / "checkpoint.json"
    signed = await run_cli(seeded, "checkpoint", "--key", str(key), "--out", str(out))
    assert signed.returncode == 0, signed.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    body = json.loads(out.read_text())
    assert body["position"] == SEEDED_ENTRIES and re.fullmatch("[0-9a-f]{128}", body["signature"])
    exported = await run_cli(seeded, "checkpoint", "--key", str(key), "--export-public-key")
    assert exported.stdout.strip() == body["public_key"]
    async with await psycopg.AsyncConnection.connect(seeded) as conn:
        row = await (await conn.execute("SELECT hash, signature FROM signed_checkpoints")).fetchone()
    assert row == (body["hash"], body["signature"])
    audited = await run_cli(seeded, "audit", "--checkpoint", str(out), "--public-key", body["public_key"])
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert audited.stdout.startswith("ledger audit ok")


@pytest.mark.slow  # child processes: the `ledger` commands
async def test_a_checkpoint_without_a_pinned_key_is_refused_by_the_command(seeded, tmp_path):
    out = tmp_path / "checkpoint.json"
    signed = await run_cli(seeded, "checkpoint", "--key", str(tmp_path / "key.pem"), "--out", str(out))
    assert signed.returncode == 0, signed.stderr
    audited = await run_cli(seeded, "audit", "--checkpoint", str(out))
    assert audited.returncode == 2
    assert "--public-key" in audited.stderr and len(audited.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # child processes: the `ledger` commands
async def test_a_rewritten_journal_with_a_re_signed_checkpoint_fails_against_the_pinned_key(seeded, tmp_path):
    """The attack: rewrite the database, then sign a fresh checkpoint over it with a key of one's
    own. The file verifies against the key written inside it; the audit must not believe that."""
    honest_key = signing.load_or_create_key(tmp_path / "honest.pem")
    pinned = signing.public_key_hex(honest_key)
    await rewrite_history(seeded, 20, reference="rewritten")
    forger_key = signing.load_or_create_key(tmp_path / "forger.pem")
    forged = await command.take_signed_head(seeded, forger_key)
    report = await audit_both(seeded, signed_head=forged, public_key=pinned)
    assert failed_checks(report) == {"checkpoint"}
    assert "not by the pinned key" in report.first_failure.detail
    key_file = tmp_path / "pinned.hex"
    key_file.write_text(pinned + "\n")
    out = tmp_path / "forged.json"
    out.write_bytes(signing.encode(forged))
    audited = await run_cli(seeded, "audit", "--checkpoint", str(out), "--public-key", str(key_file))
    assert audited.returncode == 1, audited.stdout + audited.stderr
    assert "check checkpoint" in audited.stdout


@pytest.mark.slow  # child processes: the `ledger audit` command
async def test_the_audit_command_exits_1_and_names_the_first_bad_position(seeded):
    await execute(seeded, ("UPDATE journal SET amount = amount + 1 WHERE position = 17", ()))
    human = await run_cli(seeded, "audit")
    assert human.returncode == 1
    assert "first bad position 17, check hash" in human.stdout
    machine = await run_cli(seeded, "audit", "--json")
    assert machine.returncode == 1
    assert json.loads(machine.stdout)["first_failure"]["position"] == 17


# ---- worker processes: the same verdict, from the same snapshot ------------------------------



@pytest.mark.slow  # child processes: the audit's worker processes
async def test_worker_processes_reach_the_verdict_of_the_audit_alone_on_a_tampered_journal(seeded, monkeypatch):
    monkeypatch.setattr(audit_pool, "AUDIT_RANGE_ENTRIES", RANGE_ENTRIES_SMALL)
    await execute(
        seeded,
        ("UPDATE journal SET amount = amount + 1 WHERE position = 7", ()),  # the last of the first range
        ("UPDATE journal SET reference = 'forged' WHERE position = 8", ()),  # the first of the second
        ("DELETE FROM postings WHERE position = 29", ()),
        ("DELETE FROM journal WHERE position = 29", ()),  # the chain breaks inside a range
        ("UPDATE journal SET prev_hash = %s WHERE position = 36", (domain.ZERO_HASH,)),  # at a range's start
    )
    alone = await audit.run_audit(seeded, workers=0)
    with_workers = await audit.run_audit(seeded, workers=2)
    assert verdict(with_workers) == verdict(alone)
    assert first_failure(with_workers) == (7, "hash")
    results = {check.name: check for check in with_workers.checks}
    assert (results["hash"].failures, results["contiguous"].first.position, results["chain"].first.position) == (
        3, 29, 30)


@pytest.mark.slow  # child processes: the audit's worker processes
async def test_worker_processes_reach_the_verdict_of_the_audit_alone_on_an_honest_journal(seeded, monkeypatch):
    monkeypatch.setattr(audit_pool, "AUDIT_RANGE_ENTRIES", RANGE_ENTRIES_SMALL)
    with_workers = await audit.run_audit(seeded, workers=2)
    assert with_workers.ok, with_workers.first_failure
    assert verdict(with_workers) == verdict(await audit.run_audit(seeded, workers=0))


async def test_balances_after_shifted_from_one_position_on_are_caught_there(seeded):
    """Each range alone is consistent past the shift; only the link between ranges (the balance
    before a range, as its stored balances after imply it) shows that it is not the replayed one."""
    victim = (await all_entries(seeded))[19].to_account_id
    await execute(seeded, ("UPDATE postings SET balance_after = balance_after + 5 WHERE account_id = %s AND position >= 20",
                           (victim,)))
    report = await audit_both(seeded)
    assert first_failure(report) == (20, "balance_after")
    assert failed_checks(report) == {"balance_after"}


async def _rows_and_accounts(url: str) -> tuple[list[tuple], dict[str, tuple[str, str, int]]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        accounts = await store.account_kinds(conn)
    with psycopg.Connection.connect(url) as conn:  # a transaction, as a worker's snapshot is
        rows = audit_reads.entries_between(conn, 0, SEEDED_ENTRIES)
    return rows, {str(a): (kind, currency, a.int) for a, (kind, currency) in accounts.items()}


async def test_only_plain_ranges_are_summarized(seeded):
    rows, accounts = await _rows_and_accounts(seeded)
    columns = audit_reads.AUDITED_COLUMNS

    def summary(rows: list[tuple], after: int = 0, upto: int = SEEDED_ENTRIES, **options):
        return audit.summarize(rows, after=after, upto=upto, accounts=accounts,
                               projector_position=options.get("projector_position", 0), with_hashes=True)

    def edited(position: int, **values) -> list[tuple]:
        row = list(rows[position - 1])
        for name, value in values.items():
            row[columns.index(name)] = value
        return rows[:position - 1] + [tuple(row)] + rows[position:]

    whole = summary(rows)
    assert whole is not None and (whole.prev_hash, whole.hash) == (domain.ZERO_HASH, rows[-1][columns.index("hash")])
    assert whole.hashes == [row[columns.index("hash")] for row in rows] and msgspec.msgpack.decode(whole.payments) == []
    assert all(start == 0 for start in whole.starts.values())
    later = summary(rows[20:], after=20)
    assert later is not None and later.prev_hash == rows[19][columns.index("hash")]
    payments = msgspec.msgpack.decode(summary(rows, projector_position=SEEDED_ENTRIES).payments)
    assert len(payments) == SEEDED_ENTRIES // 2  # each wallet is funded, then pays a vendor
    amount, postings = rows[9][columns.index("amount")], rows[9][columns.index("amounts")]
    not_plain = {
        "a forged reference": edited(10, reference="forged"),
        "a reference to escape, forged": edited(10, reference='"forged"'),
        "forged metadata": edited(10, metadata={"a": "1"}),
        "a changed amount": edited(10, amount=amount + 1),
        "a posting changed with its twin": edited(10, amounts=[postings[0] - 1, postings[1] + 1]),
        "a broken chain": edited(10, prev_hash=domain.ZERO_HASH),
        "a refund": edited(10, kind="refund"),
        "a hold": edited(10, hold_id=str(uuid.uuid4())),
        "an unknown account": edited(10, account_ids=[str(uuid.uuid4()), rows[9][columns.index("account_ids")][1]]),
        "another currency": edited(10, currency="EUR"),
        "a stored balance after that is not the previous one plus the posting": edited(
            10, balances_after=[b + 1 for b in rows[9][columns.index("balances_after")]]),
        "a missing entry": rows[:9] + rows[10:],
        "a missing last entry": rows[:-1],
    }
    assert {what: summary(variant) for what, variant in not_plain.items()} == dict.fromkeys(not_plain)


@pytest.mark.slow  # child processes: the audit's worker processes
async def test_an_honest_projected_journal_is_summarized_range_by_range(seeded, monkeypatch):
    """Every range of an honest journal of plain transfers is checked in a worker and summarized:
    the audit's process feeds no entry and reads no range again."""
    await _project(seeded, 30)
    monkeypatch.setattr(audit_pool, "AUDIT_RANGE_ENTRIES", RANGE_ENTRIES_SMALL)

    def fed_entry_by_entry(*_) -> None:
        raise AssertionError("a range of plain transfers was fed entry by entry")

    monkeypatch.setattr(audit.Replay, "feed", fed_entry_by_entry)
    monkeypatch.setattr(audit_pool.Reader, "page", fed_entry_by_entry)
    report = await audit.run_audit(seeded, workers=2)
    assert report.ok, report.first_failure
    assert (report.entries, report.projector_position) == (SEEDED_ENTRIES, 30)


async def test_a_worker_joining_the_audits_snapshot_does_not_see_a_later_write(seeded):
    dialect = await db.detect_dialect(seeded)
    async with await psycopg.AsyncConnection.connect(seeded, autocommit=True) as auditor:
        token = await audit_reads.open_shared_snapshot(auditor, dialect)
        await execute(seeded, ("UPDATE journal SET reference = 'after the snapshot' WHERE position = 3", ()))
        with psycopg.Connection.connect(seeded, autocommit=True) as worker:
            audit_reads.join_snapshot(worker, dialect, token)
            rows = audit_reads.entries_between(worker, 0, SEEDED_ENTRIES)
    references = [row[audit_reads.AUDITED_COLUMNS.index("reference")] for row in rows]
    assert len(rows) == SEEDED_ENTRIES and "after the snapshot" not in references


@dataclasses.dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(database_url: str, *args: str) -> Completed:
    """`ledger ...` in a child process, as an operator runs it."""
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await child.communicate()
    return Completed(child.returncode, stdout.decode(), stderr.decode())


# ---- the pure replay ------------------------------------------------------------------------


def sealed_journal(count: int) -> tuple[dict[uuid.UUID, tuple[str, str]], list[schemas.JournalEntry]]:
    """A system account paying one wallet `count` times, sealed as the committer seals."""
    system, wallet = uuid.uuid4(), uuid.uuid4()
    accounts = {system: ("system", "EUR"), wallet: ("wallet", "EUR")}
    entries, prev_hash = [], domain.ZERO_HASH
    for position in range(1, count + 1):
        command = domain.EntryCommand(
            principal_id=uuid.uuid4(), principal_role="admin", idempotency_key=str(position), request_hash=b"",
            from_account_id=system, to_account_id=wallet, amount=position, currency="EUR", reference="",
            metadata={},
        )
        entry = domain.seal(position=position, transfer_id=uuid.uuid4(), command=command,
                            committed_at="2025-01-31T12:00:00.000000Z", prev_hash=prev_hash)
        entries.append(entry)
        prev_hash = entry.hash
    return accounts, entries


def test_the_replay_of_sealed_entries_finds_nothing():
    accounts, entries = sealed_journal(5)
    replay = audit.Replay(accounts)
    for entry in entries:
        replay.feed(entry)
    balances = {entries[0].from_account_id: -15, entries[0].to_account_id: 15}
    replay.finish(head=(5, entries[-1].hash), write_model=balances, projected={}, orphan_position=None)
    assert replay.findings.first_failure() is None


def test_the_replay_locates_a_missing_entry_and_the_broken_chain_after_it():
    accounts, entries = sealed_journal(5)
    replay = audit.Replay(accounts)
    for entry in entries[:2] + entries[3:]:
        replay.feed(entry)
    results = {check.name: check for check in replay.findings.results()}
    assert results["contiguous"].first == audit.Failure(3, "contiguous", "position 3 missing")
    assert results["chain"].first is not None and results["chain"].first.position == 4


def as_row(entry: schemas.JournalEntry) -> tuple:
    """The entry as the audit reads it (`ledger.store.audit.AUDITED_COLUMNS`)."""
    text = lambda value: None if value is None else str(value)  # noqa: E731
    return (entry.position, str(entry.transfer_id), str(entry.from_account_id), str(entry.to_account_id), entry.amount,
            entry.currency, entry.reference, entry.metadata, entry.committed_at, entry.prev_hash, entry.hash,
            entry.kind, text(entry.refund_of), text(entry.hold_id), text(entry.account_id), entry.account_status,
            entry.min_balance, entry.max_balance, [str(p.account_id) for p in entry.postings],
            [p.amount for p in entry.postings], [0] * len(entry.postings))


def test_the_rows_hash_exactly_as_the_entries_whatever_they_hold():
    accounts, entries = sealed_journal(3)
    first = entries[0]
    variants = [
        first,
        msgspec.structs.replace(first, metadata={"zeta": "1", "alpha": "é ünïcode", "quote": '"\\', "del": "\x7f"}),
        msgspec.structs.replace(first, reference="Grüße \u2028 <tab>\t", kind="refund", refund_of=uuid.uuid4()),
        msgspec.structs.replace(first, kind="capture", hold_id=uuid.uuid4(), metadata={"b": "2", "a": "1"}),
        msgspec.structs.replace(first, kind="account", account_id=first.from_account_id, account_status="frozen",
                                min_balance=-5, amount=0, postings=[], metadata={}),
    ]
    sealed = [msgspec.structs.replace(v, hash=domain.recompute_hash(v)) for v in variants]
    assert audit.hash_mismatches([as_row(entry) for entry in sealed]) == {}
    forged = [msgspec.structs.replace(entry, position=index + 1, hash=domain.ZERO_HASH)
              for index, entry in enumerate(sealed)]
    assert audit.hash_mismatches([as_row(entry) for entry in forged]) == {
        entry.position: domain.recompute_hash(entry) for entry in forged}


# ---- the auditor's HTTP view and the documented verifier ------------------------------------


async def test_an_auditor_reads_the_journal_and_its_head_and_a_client_is_forbidden(stack):
    wallet = await stack.funded_wallet(100)
    _, auditor = await stack.principal("auditor")
    head = await stack.client.get("/v1/journal/head", token=auditor)
    assert head.status == 200 and head.body["position"] >= 1 and len(head.body["hash"]) == 64
    page = await stack.client.get("/v1/journal", token=auditor, params={"after": head.body["position"] - 1})
    assert page.status == 200
    assert json.loads(page.text.splitlines()[0])["hash"] == head.body["hash"]
    for path in ("/v1/journal", "/v1/journal/head"):
        denied = await stack.client.get(path, token=wallet.token)
        assert denied.status == 403 and denied.code == "forbidden"


async def export_journal(stack, path: Path) -> int:
    """Page through GET /v1/journal as an auditor into one NDJSON file; returns the last position."""
    _, auditor = await stack.principal("auditor")
    after, lines = 0, []
    while True:
        params = {"after": after, "limit": JOURNAL_PAGE_LIMIT}
        page = await stack.client.get("/v1/journal", token=auditor, params=params)
        assert page.status == 200, page.text
        batch = page.text.splitlines()
        if not batch:
            break
        lines += batch
        after = json.loads(batch[-1])["position"]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return after


def documented_verifier(tmp_path: Path) -> Path:
    """The snippet of docs/audit.md between its marker comments, as a script."""
    text = DOCS.read_text(encoding="utf-8")
    block = text.split("<!-- verifier:start -->", 1)[1].split("<!-- verifier:end -->", 1)[0]
    code = block.strip().removeprefix("```python").removesuffix("```")
    assert len(code.strip().splitlines()) <= 20, "the documented verifier must stay short"
    script = tmp_path / "verify.py"
    script.write_text(code, encoding="utf-8")
    return script


async def run_verifier(script: Path, export: Path) -> Completed:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-I", str(script), str(export), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await child.communicate()
    return Completed(child.returncode, stdout.decode(), stderr.decode())


@pytest.mark.slow  # a child process: the documented verifier
async def test_the_documented_verifier_accepts_a_real_export(stack, tmp_path):
    wallet = await stack.funded_wallet(500)
    vendor = await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 120, reference="café ☕",
                                metadata={"note": "naïve ✓"})
    assert paid.status == 201
    export = tmp_path / "journal.ndjson"
    last = await export_journal(stack, export)
    verified = await run_verifier(documented_verifier(tmp_path), export)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip().startswith(f"ok: {last} entries, head ")


@pytest.mark.slow  # a child process: the documented verifier
async def test_the_documented_verifier_rejects_an_edited_export(stack, tmp_path):
    await stack.funded_wallet(500)
    export = tmp_path / "journal.ndjson"
    await export_journal(stack, export)
    lines = export.read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[-1])
    edited["reference"] = "edited"
    export.write_text("\n".join(lines[:-1] + [json.dumps(edited)]) + "\n", encoding="utf-8")
    verified = await run_verifier(documented_verifier(tmp_path), export)
    assert verified.returncode == 1
    assert verified.stderr.strip() == f"FAIL: the hash of {edited['position']} does not match its content"
