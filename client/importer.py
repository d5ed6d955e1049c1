"""`ledger import FILE`: a file of commands sent through `POST /v1/batches`, each row committed once.

The importer is client-side: the typed client over HTTP, with a principal's token, nothing of the
server. The command line reaches it by name (`cli.CLIENT_COMMANDS`), as it does the tooling, since
the server never imports the client (pyproject.toml, the `server-client` contract). docs/import.md
says how to use it; `client.rows` how a file becomes items and keys.

The file is read twice, each time as a stream: once for its digest (the derived keys) and its
number of lines (the progress), once to send it `--batch-size` rows at a time in `independent` mode,
one batch after the other by default, so rows are decided in file order (`--concurrency` keeps more
in flight). Memory stays flat in the file's size: only the batches in flight are held, and
rejected rows are written out as they come.

Its own settings are its options; `LEDGER_API_URL` and `LEDGER_TOKEN` are their defaults, read
here because the importer runs on an operator's machine, not as a process of the service.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

import schemas
from client import rows
from client.aio import LedgerClient
from client.batches import BATCH_ITEMS_DEFAULT
from client.transport import CONNECTION_ERRORS, RETRY_TOTAL_S_DEFAULT, RETRYABLE_CODES, LedgerProblem
from client.rows import FileProblem, Rejection, Row
from schemas.batches import BATCH_ITEMS_CAP, BatchItemAnswer

# The contract's exit codes for `ledger import` (v3, "Batches").
EXIT_OK = 0  # every row committed, now or by an earlier run
EXIT_REJECTED = 1  # some rows were rejected (FILE.rejected.ndjson says which and why)
EXIT_USAGE = 2  # a bad option, a file that cannot be read, a request the service refuses as a whole
EXIT_UNAVAILABLE = 3  # the service could not be reached, or did not decide, within the retry budget

URL_DEFAULT = "http://127.0.0.1:8080"  # the contract's default listener of `ledger api`
REJECTED_SUFFIX = ".rejected.ndjson"
PLAIN_LINE_EVERY_ROWS = 1000  # off a terminal: one progress line per this many rows
CONCURRENCY_MAX = 16  # batches in flight at once; past the service's cores it only queues
BAR_REFRESH_S = 0.2  # on a terminal: the progress bar redraws at most this often


class UsageProblem(Exception):
    """The service refused the request as a whole (a token it does not know, a role that may not
    write, a route it does not have): no row of the file can succeed, so the import stops."""


class Unavailable(Exception):
    """The service could not be reached, or left rows undecided, within the retry budget."""


@dataclasses.dataclass(slots=True)
class Tally:
    rows: int = 0  # rows read (blank lines are not rows)
    committed: int = 0  # committed by this run
    replayed: int = 0  # committed by an earlier run: the service answered with the first answer
    rejected: int = 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger import", description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="Exit: 0 every row committed (or was already), 1 some rows rejected, 2 usage or file error, "
               "3 the service unavailable (run the same file again: nothing commits twice). See docs/import.md.")
    parser.add_argument("file", type=Path, help="CSV with a header row (.csv) or NDJSON (.ndjson, .jsonl)")
    parser.add_argument("--format", choices=["csv", "ndjson"], help="the file's format, when its name does not say")
    parser.add_argument("--url", default=os.environ.get("LEDGER_API_URL", URL_DEFAULT),
                        help=f"the API (default: LEDGER_API_URL, else {URL_DEFAULT})")
    parser.add_argument("--token", default=os.environ.get("LEDGER_TOKEN"),
                        help="the principal's bearer token (default: LEDGER_TOKEN, which keeps it out of `ps`)")
    parser.add_argument("--batch-size", type=_whole_number(1, BATCH_ITEMS_CAP), default=BATCH_ITEMS_DEFAULT,
                        help=f"rows a request (default {BATCH_ITEMS_DEFAULT}, the service's default cap)")
    parser.add_argument("--concurrency", type=_whole_number(1, CONCURRENCY_MAX), default=1,
                        help="batches in flight at once (default 1: rows are decided in file order; more is faster "
                             "but lets a row be decided before an earlier one in another batch)")
    parser.add_argument("--retry-s", type=_seconds, default=RETRY_TOTAL_S_DEFAULT,
                        help=f"how long to retry an unavailable service before exit 3 (default {RETRY_TOTAL_S_DEFAULT:g})")
    parser.add_argument("--dry-run", action="store_true", help="check every row's shape; send nothing")
    parser.add_argument("--json", action="store_true", help="the summary as one JSON object")
    return parser


def _whole_number(low: int, high: int):
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number in {low}..{high}")
        return int(text)

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def main(argv: list[str] | None = None) -> int:
    """`ledger import`'s entry (argparse exits 2 on a usage error by itself)."""
    return asyncio.run(run(parser().parse_args(argv)))


async def run(options: argparse.Namespace) -> int:
    """The whole command: read, check or send, report; the exit code."""
    path: Path = options.file
    tally = Tally()
    started = time.monotonic()
    try:
        file_format = rows.format_of(path, options.format)
        digest, lines = rows.digest_and_lines(path)
        if not options.dry_run and not options.token:
            raise UsageProblem("no token: give --token or set LEDGER_TOKEN")
        progress = _progress(path, lines - (file_format == "csv"))
        source = rows.read(path, file_format, digest)
        try:
            if options.dry_run:
                _check(source, tally, progress)
            else:
                await _import(options, source, tally, progress, Rejected(Path(f"{path}{REJECTED_SUFFIX}")))
        finally:
            progress.close()
    except (FileProblem, UsageProblem) as problem:
        print(f"ledger import: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as problem:
        print(f"ledger import: the service is unavailable: {problem}; run the same file again to go on "
              "(rows already committed are not committed twice)", file=sys.stderr)
        _summary(options, tally, time.monotonic() - started)
        return EXIT_UNAVAILABLE
    _summary(options, tally, time.monotonic() - started)
    return EXIT_REJECTED if tally.rejected else EXIT_OK


def _check(source: Iterable[Row], tally: Tally, progress: Progress) -> None:
    """`--dry-run`: every row decoded as the service would; each bad one reported by its number."""
    row = None
    for row in source:
        tally.rows += 1
        if row.rejection is not None:
            tally.rejected += 1
            print(f"row {row.number}: {row.rejection.code}: {row.rejection.detail}")
        if tally.rows % PLAIN_LINE_EVERY_ROWS == 0:
            progress.update(row.number, tally)
    if row is not None:
        progress.update(row.number, tally)


async def _import(options: argparse.Namespace, source: Iterable[Row], tally: Tally, progress: Progress,
                  rejected: Rejected) -> None:
    """Send the batches, up to `--concurrency` at a time, and settle their answers in file order."""
    in_flight: collections.deque[tuple[list[Row], asyncio.Task]] = collections.deque()
    async with LedgerClient(options.url, token=options.token, retry_total_s=options.retry_s) as ledger:
        try:
            for batch in _batches(source, options.batch_size):
                sendable = [row for row in batch if row.item is not None]
                in_flight.append((batch, asyncio.create_task(_send(ledger, sendable)) if sendable else None))
                if len(in_flight) >= options.concurrency:
                    await _settle_first(in_flight, tally, progress, rejected)
            while in_flight:
                await _settle_first(in_flight, tally, progress, rejected)
        finally:
            for _, task in in_flight:
                if task is not None and not task.done():
                    task.cancel()  # an answer lost here is a replay for the next run
                elif task is not None and not task.cancelled():
                    task.exception()  # retrieved: the first failure is the one raised
            rejected.close()


async def _settle_first(in_flight: collections.deque, tally: Tally, progress: Progress, rejected: Rejected) -> None:
    batch, task = in_flight[0]
    answered = await task if task is not None else []
    in_flight.popleft()
    tally.rows += len(batch)
    for row in batch:
        if row.item is None:
            rejected.write(row, tally)
    _settle(answered, tally, rejected)
    rejected.flush()
    progress.update(batch[-1].number, tally)


def _batches(source: Iterable[Row], size: int) -> Iterator[list[Row]]:
    """The rows in batches of at most `size` items with unique keys (the service refuses a batch
    that names a key twice): a row naming a key already in the batch starts the next batch, where
    the service answers it as any reuse of a key. Rows without an item travel along."""
    batch: list[Row] = []
    keys: set[str] = set()
    for row in source:
        key = row.item.idempotency_key if row.item is not None else None
        if key is not None and (key in keys or len(keys) == size):
            yield batch
            batch, keys = [], set()
        batch.append(row)
        if key is not None:
            keys.add(key)
    if batch:
        yield batch


async def _send(ledger: LedgerClient, batch: list[Row]) -> list[tuple[Row, BatchItemAnswer | None]]:
    """Each row with the service's answer to its item; None for a row whose item the service
    refused by its shape (its `rejection` then says why) and which was taken out of the batch."""
    try:
        answer = await ledger.batch([row.item for row in batch], mode="independent")
    except LedgerProblem as problem:
        if problem.status == 413 and len(batch) > 1:  # too many bytes, not too many items: halve it
            half = len(batch) // 2
            return await _send(ledger, batch[:half]) + await _send(ledger, batch[half:])
        refused = _refused_by_shape(problem, batch)
        if not refused:
            raise _whole_request(problem) from None
        rest = [row for row in batch if row.rejection is None]
        return [(row, None) for row in refused] + (await _send(ledger, rest) if rest else [])
    except CONNECTION_ERRORS as error:
        raise Unavailable(f"{ledger.base_url}: {error or type(error).__name__}") from None
    return list(zip(batch, answer.items))


def _refused_by_shape(problem: LedgerProblem, batch: list[Row]) -> list[Row]:
    """The rows a 400 (or a 413 of one row) names; a check the importer's decoding could not make
    (a cap on items lower than the batch, say) names none, and the request is refused as a whole."""
    if problem.status == 413:
        refused = batch
    elif problem.status == 400:
        prefix = "$.items["
        named = {int(issue.path[len(prefix):].split("]", 1)[0]) for issue in problem.errors
                 if issue.path.startswith(prefix) and issue.path[len(prefix):].split("]", 1)[0].isdigit()}
        refused = [batch[index] for index in sorted(named) if index < len(batch)]
    else:
        refused = []
    for row in refused:
        errors = [{"path": issue.path, "message": issue.message} for issue in problem.errors or ()]
        row.rejection = Rejection(problem.status, problem.code, problem.detail, errors)
    return refused


def _whole_request(problem: LedgerProblem) -> Exception:
    if problem.status == 429 or problem.status >= 500:
        return Unavailable(f"{problem.status} {problem.code}: {problem.detail}")
    return UsageProblem(f"the service refused the batch: {problem.status} {problem.code}: {problem.detail}")


def _settle(answered: list[tuple[Row, BatchItemAnswer | None]], tally: Tally, rejected: Rejected) -> None:
    """Count each answer; write the rejected rows out. Rows the service left undecided after the
    client's retries (503) stop the import: a later run sends them again with the same keys."""
    undecided = 0
    for row, answer in answered:
        if answer is None:
            rejected.write(row, tally)
        elif answer.status == 201:
            tally.replayed += answer.replayed
            tally.committed += not answer.replayed
        elif isinstance(answer.body, schemas.Problem) and answer.body.code in RETRYABLE_CODES:
            undecided += 1
        else:
            body = answer.body
            errors = [{"path": issue.path, "message": issue.message} for issue in body.errors or ()]
            row.rejection = Rejection(answer.status, body.code, body.detail, errors)
            rejected.write(row, tally)
    if undecided:
        rejected.flush()
        raise Unavailable(f"{undecided} rows were not decided (503) within the retry budget")


class Rejected:
    """FILE.rejected.ndjson: one line a rejected row, `{row, problem, given}`, written as rows are
    answered. A run starts it afresh: a row rejected before is sent again (a rejection does not use
    up its key), so what the last run rejected is what the file says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        path.unlink(missing_ok=True)

    def write(self, row: Row, tally: Tally) -> None:
        tally.rejected += 1
        if self._file is None:
            self._file = self.path.open("wb")
        rejection = row.rejection
        problem: dict[str, Any] = {"status": rejection.status, "code": rejection.code, "detail": rejection.detail}
        if rejection.errors:
            problem["errors"] = rejection.errors
        self._file.write(msgspec.json.encode({"row": row.number, "problem": problem, "given": row.given}) + b"\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _summary(options: argparse.Namespace, tally: Tally, elapsed_s: float) -> None:
    rate = tally.rows / elapsed_s if elapsed_s > 0 else 0.0
    rejected_file = None if options.dry_run or not tally.rejected else f"{options.file}{REJECTED_SUFFIX}"
    if options.json:
        print(json.dumps({**dataclasses.asdict(tally), "dry_run": options.dry_run, "rejected_file": rejected_file,
                          "seconds": round(elapsed_s, 3), "rows_per_s": round(rate, 1)}))
    elif options.dry_run:
        print(f"{options.file}: {tally.rows:,} rows checked, {tally.rejected:,} bad, nothing sent")
    else:
        where = f" (see {rejected_file})" if rejected_file else ""
        print(f"{options.file}: {tally.rows:,} rows: {tally.committed:,} committed, {tally.replayed:,} committed "
              f"before, {tally.rejected:,} rejected{where}; {elapsed_s:.1f} s, {rate:,.0f} rows/s")


class Progress:
    """Off a terminal: a plain line on stderr each time another thousand rows are done."""

    def __init__(self, path: Path, total: int) -> None:
        self.path, self.total = path, max(total, 0)
        self._started = time.monotonic()
        self._shown = 0

    def update(self, row: int, tally: Tally) -> None:
        if row // PLAIN_LINE_EVERY_ROWS <= self._shown // PLAIN_LINE_EVERY_ROWS:
            return
        self._shown = row
        elapsed_s = time.monotonic() - self._started
        rate = row / elapsed_s if elapsed_s > 0 else 0.0
        left_s = (self.total - row) / rate if rate > 0 and self.total > row else 0.0
        share = f" ({row / self.total:.0%})" if self.total >= row else ""
        print(f"{self.path}: row {row:,} of {self.total:,}{share}, {rate:,.0f} rows/s, ETA {left_s:.0f} s, "
              f"{tally.committed + tally.replayed:,} committed, {tally.rejected:,} rejected", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class Bar(Progress):
    """On a terminal: tqdm's bar, with rows/s and the ETA, and the tally beside it."""

    def __init__(self, path: Path, total: int, tqdm: Any) -> None:
        super().__init__(path, total)
        self._bar = tqdm(total=self.total, unit="row", desc=path.name, file=sys.stderr, mininterval=BAR_REFRESH_S,
                         dynamic_ncols=True)

    def update(self, row: int, tally: Tally) -> None:
        self._bar.set_postfix(committed=tally.committed + tally.replayed, rejected=tally.rejected, refresh=False)
        self._bar.update(row - self._bar.n)

    def close(self) -> None:
        # Left as it is: a run that stops early shows where. (The total counts lines, so a CSV
        # whose cells hold line breaks ends a little short of 100%.)
        self._bar.close()


def _progress(path: Path, total: int) -> Progress:
    if not sys.stderr.isatty():
        return Progress(path, total)
    try:
        from tqdm import tqdm
    except ImportError:
        print("ledger import: for a progress bar, pip install 'wallet-ledger[import]'", file=sys.stderr)
        return Progress(path, total)
    return Bar(path, total, tqdm)


if __name__ == "__main__":
    sys.exit(main())
