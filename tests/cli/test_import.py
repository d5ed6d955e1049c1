"""`ledger import FILE` against the live stack: CSV and NDJSON rows committed once, rejected rows
written out by row number, the dry run, reruns (after a SIGKILL too) and the exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from client import importer, rows
from tests.conftest import eventually
from tools.embedded import free_port

HEADER = "type,from_account_id,to_account_id,amount,currency,reference,metadata.invoice"


async def _import(capsys, *argv: str) -> tuple[int, dict, str]:
    """The command, in the test's event loop (the stack serves from it): exit code, summary, stdout."""
    code = await importer.run(importer.parser().parse_args([*map(str, argv), "--json"]))
    printed = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(printed[-1]), "\n".join(printed[:-1])


async def _head(stack) -> int:
    reply = await stack.client.get("/v1/journal/head", token=stack.admin)
    assert reply.status == 200, reply.text
    return reply.body["position"]


async def _journal_after(stack, position: int) -> list[dict]:
    reply = await stack.client.get("/v1/journal", token=stack.admin, params={"after": position, "limit": 10000})
    assert reply.status == 200, reply.text
    return [json.loads(line) for line in reply.text.splitlines()]


async def _references(stack, account_id: str) -> list[str]:
    """The reference of every entry on the account's statement, all pages."""
    found, after = [], None
    while True:
        params = {"limit": 1000, **({"after": after} if after else {})}
        reply = await stack.client.get(f"/v1/accounts/{account_id}/entries", token=stack.admin, params=params)
        assert reply.status == 200, reply.text
        found += [item["reference"] for item in reply.body["items"]]
        if not (after := reply.body["next"]):
            return found


def _rejected(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(f"{path}{importer.REJECTED_SUFFIX}").read_text().splitlines()]


async def test_a_csv_file_commits_its_rows_in_file_order(stack, capsys, tmp_path):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    pay = f"transfer,{wallet.account_id},{vendor.account_id}"
    path = tmp_path / "payouts.csv"
    path.write_text("\n".join([
        HEADER, f"{pay},100,USD,row-1,inv-1", f"{pay},20,USD,row-2,", "",
        f"hold,{wallet.account_id},{vendor.account_id},300,USD,row-4,inv-4",
    ]) + "\n")
    before = await _head(stack)
    code, summary, _ = await _import(capsys, path, "--url", stack.client.base, "--token", wallet.token)
    assert (code, summary["rows"], summary["committed"], summary["rejected"]) == (0, 3, 3, 0)
    assert await stack.balance(wallet.account_id) == 1000 - 120 - 300
    assert await stack.balance(vendor.account_id) == 120
    entries = await _journal_after(stack, before)
    # A v1-shaped entry leaves out what is at its default (contract v2: a v1 entry's bytes unchanged).
    assert [(entry.get("kind", "transfer"), entry["amount"], entry.get("reference", ""), entry.get("metadata", {}))
            for entry in entries] == [
        ("transfer", 100, "row-1", {"invoice": "inv-1"}), ("transfer", 20, "row-2", {}),
        ("hold", 300, "row-4", {"invoice": "inv-4"}),
    ]
    assert not Path(f"{path}{importer.REJECTED_SUFFIX}").exists()


async def test_an_ndjson_file_commits_its_rows_and_a_row_may_name_its_key(stack, capsys, tmp_path):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    row = {"type": "transfer", "from_account_id": wallet.account_id, "to_account_id": vendor.account_id,
           "currency": "USD"}
    first = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 7, key="invoice-7")
    assert first.status == 201, first.text
    path = tmp_path / "payouts.ndjson"
    path.write_text("".join(json.dumps(line) + "\n" for line in [
        {**row, "amount": 7, "idempotency_key": "invoice-7"},  # a replay of the single request above
        {**row, "amount": 50.0, "reference": "integral"},  # 50.0 is the integer 50, as the service reads it
        {**row, "amount": 3, "metadata": {"batch": "dec"}},
    ]))
    code, summary, _ = await _import(capsys, path, "--url", stack.client.base, "--token", wallet.token)
    assert (code, summary["committed"], summary["replayed"]) == (0, 2, 1)
    assert await stack.balance(vendor.account_id) == 7 + 50 + 3
    assert sorted(await _references(stack, vendor.account_id)) == ["", "", "integral"]


async def test_a_bad_row_in_the_middle_is_rejected_by_its_number_and_the_others_commit(stack, capsys, tmp_path):
    wallet, vendor = await stack.funded_wallet(100), await stack.vendor()
    pay = f"transfer,{wallet.account_id},{vendor.account_id}"
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join([
        HEADER, f"{pay},10,USD,a,", f"{pay},ten,USD,b,", f"{pay},1000,USD,c,", f"{pay},20,USD,d,",
    ]) + "\n")
    code, summary, _ = await _import(capsys, path, "--url", stack.client.base, "--token", wallet.token)
    assert (code, summary["committed"], summary["rejected"]) == (1, 2, 2)
    assert summary["rejected_file"] == f"{path}{importer.REJECTED_SUFFIX}"
    shape, funds = _rejected(path)
    assert (shape["row"], shape["problem"]["code"], shape["problem"]["errors"][0]["path"]) == (2, "validation_error", "$.amount")
    assert shape["given"]["amount"] == "ten"
    assert (funds["row"], funds["problem"]["status"], funds["problem"]["code"]) == (3, 422, "insufficient_funds")
    assert await stack.balance(vendor.account_id) == 30
    assert sorted(await _references(stack, vendor.account_id)) == ["a", "d"]


async def test_a_dry_run_sends_nothing_and_reports_bad_rows_by_number(stack, capsys, tmp_path):
    wallet, vendor = await stack.funded_wallet(100), await stack.vendor()
    pay = f"transfer,{wallet.account_id},{vendor.account_id}"
    path = tmp_path / "check.csv"
    path.write_text("\n".join([HEADER, f"{pay},10,USD,,", f"{pay},10,usd,,", f"refund,{pay[9:]},5,USD,,"]) + "\n")
    before = await _head(stack)
    code, summary, report = await _import(capsys, path, "--dry-run", "--url", stack.client.base,
                                          "--token", wallet.token)
    assert (code, summary["rows"], summary["rejected"], summary["dry_run"]) == (1, 3, 2, True)
    assert [line.split(":")[0] for line in report.splitlines()] == ["row 2", "row 3"]
    assert "$.currency" in report
    assert await _head(stack) == before
    assert await stack.balance(wallet.account_id) == 100
    assert not Path(f"{path}{importer.REJECTED_SUFFIX}").exists()


async def test_the_same_file_again_commits_nothing_twice(stack, capsys, tmp_path):
    wallet, vendor = await stack.funded_wallet(1000), await stack.vendor()
    path = tmp_path / "again.csv"
    path.write_text(HEADER + "\n" + "".join(
        f"transfer,{wallet.account_id},{vendor.account_id},{n},USD,row-{n},\n" for n in range(1, 11)))
    argv = (path, "--url", stack.client.base, "--token", wallet.token, "--batch-size", "4")
    code, summary, _ = await _import(capsys, *argv)
    assert (code, summary["committed"], summary["replayed"]) == (0, 10, 0)
    code, summary, _ = await _import(capsys, *argv)
    assert (code, summary["committed"], summary["replayed"], summary["rejected"]) == (0, 0, 10, 0)
    assert await stack.balance(vendor.account_id) == sum(range(1, 11))
    assert sorted(await _references(stack, vendor.account_id)) == sorted(f"row-{n}" for n in range(1, 11))


@pytest.mark.slow
async def test_a_run_killed_halfway_then_run_again_commits_each_row_exactly_once(stack, capsys, tmp_path):
    rows_total = 3000
    wallet, vendor = await stack.funded_wallet(rows_total), await stack.vendor()
    path = tmp_path / "large.ndjson"
    with path.open("w") as file:
        for number in range(1, rows_total + 1):
            file.write(json.dumps({"type": "transfer", "from_account_id": wallet.account_id, "amount": 1,
                                   "to_account_id": vendor.account_id, "currency": "USD",
                                   "reference": f"row-{number}"}) + "\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "import", str(path), "--url", stack.client.base, "--batch-size", "50",
        env={**os.environ, "LEDGER_TOKEN": wallet.token},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def some_committed() -> int:
        return await stack.balance(vendor.account_id)

    try:
        await eventually(some_committed, timeout_s=30, interval_s=0.02, what="the importer committing some rows")
    finally:
        process.send_signal(signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL
    committed_before = await stack.balance(vendor.account_id)
    assert 0 < committed_before < rows_total, "the kill came after the whole file; nothing was tested"
    code, summary, _ = await _import(capsys, path, "--url", stack.client.base, "--token", wallet.token)
    assert (code, summary["committed"] + summary["replayed"]) == (0, rows_total)
    assert summary["replayed"] >= committed_before
    assert await stack.balance(vendor.account_id) == rows_total
    references = await _references(stack, vendor.account_id)
    assert sorted(references) == sorted(f"row-{number}" for number in range(1, rows_total + 1))


async def test_a_closed_port_is_exit_3_and_a_missing_file_exit_2(capsys, tmp_path):
    path = tmp_path / "one.csv"
    path.write_text(HEADER + "\n" + "transfer,6a2b5c3e-0d1f-4b7a-9c8e-2f1a3b4c5d6e,"
                    "7b3c6d4f-1e2a-4c8b-8d9f-3a2b4c5d6e7f,1,USD,,\n")
    code = await importer.run(importer.parser().parse_args(
        [str(path), "--url", f"http://127.0.0.1:{free_port()}", "--token", "t", "--retry-s", "0"]))
    assert code == 3
    assert "the service is unavailable" in capsys.readouterr().err
    assert await importer.run(importer.parser().parse_args([str(tmp_path / "missing.csv"), "--token", "t"])) == 2
    assert "No such file" in capsys.readouterr().err
    path.write_text("type,amout\ntransfer,1\n")
    assert await importer.run(importer.parser().parse_args([str(path), "--token", "t"])) == 2
    assert "unknown column(s) 'amout'" in capsys.readouterr().err


def test_derived_keys_follow_the_file_content_and_the_row_number(tmp_path):
    """The same bytes ask for the same keys (a rerun replays); one byte changed asks for others."""
    path = tmp_path / "keys.csv"
    path.write_text("type,amount\nrefund,1\n")
    digest, lines = rows.digest_and_lines(path)
    assert lines == 2 and rows.digest_and_lines(path)[0] == digest
    path.write_text("type,amount\nrefund,2\n")
    changed, _ = rows.digest_and_lines(path)
    assert rows.derived_key(digest, 1) != rows.derived_key(changed, 1) != rows.derived_key(changed, 2)
    assert len(rows.derived_key(digest, 10**9)) <= 255
