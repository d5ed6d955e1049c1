"""`ledger audit`: exit codes, the human report and the progress bar."""

from __future__ import annotations

import asyncio
from typing import TextIO

import sys
from pathlib import Path
import msgspec
import psycopg

from proofs import signing
from ledger import config
from ledger.exits import Exit
from audit.report import AuditReport, PROGRESS_BAR_CHARS
from audit.snapshot import run_audit


# ---- `ledger audit` -------------------------------------------------------------------------


def main(
    settings: config.Settings, *, as_json: bool, from_position: int, checkpoint: str | None, public_key: str | None
) -> int:
    """0 when every check holds, 1 when one fails, 2 when the audit could not run; an unreachable
    database is raised to the command line, which exits 3."""
    if checkpoint and not public_key:
        print("ledger audit: --checkpoint needs --public-key (or LEDGER_AUDIT_PUBLIC_KEY): a checkpoint is"
              " proof only when signed by a key you pinned", file=sys.stderr)
        return Exit.USAGE
    try:
        signed = signing.read_file(Path(checkpoint)) if checkpoint else None
        pinned = signing.read_public_key(public_key) if public_key else None
    except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as error:
        print(f"ledger audit: cannot read the checkpoint or the public key: {error}", file=sys.stderr)
        return Exit.USAGE
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        report = asyncio.run(run_audit(settings.database.url, from_position=from_position, signed_head=signed,
                                       public_key=pinned, projector_name=settings.projector.name, progress=bar))
    except psycopg.OperationalError:
        raise  # the command line reports an unreachable database: one line, exit 3
    except psycopg.Error as error:
        print(f"ledger audit: cannot read the journal: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return Exit.USAGE
    finally:
        if bar is not None:
            bar.close()
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n" if as_json else render(report))
    return Exit.OK if report.ok else Exit.CHECK_FAILED


def render(report: AuditReport) -> str:
    """The human report: the verdict, a table of checks, then the counts and the speed."""
    first = report.first_failure
    if first is None:
        verdict = "ok: every check holds"
    else:
        verdict = f"FAIL: first bad position {first.position}, check {first.check}: {first.detail}"
    lines = [f"ledger audit {verdict}", "", f"{'check':<16} {'result':<6} {'failures':>8}  first at"]
    for check in report.checks:
        where = str(check.first.position) if check.first else ""
        lines.append(f"{check.name:<16} {'ok' if check.ok else 'FAIL':<6} {check.failures:>8}  {where}")
    lines += [
        "",
        f"entries {report.entries:,} (positions {report.from_position + 1}..{report.last_position}),"
        f" accounts {report.accounts:,}, {report.seconds:.2f} s, {report.entries_per_s:,.0f} entries/s",
        f"merkle tree {report.tree_size:,} leaves checked, {report.tree_heads:,} signed tree heads"
        f" (signatures {report.tree_head_signatures})",
    ]
    return "\n".join(lines) + "\n"


class ProgressBar:
    """A one-line bar on a terminal's stderr, redrawn in place."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._drawn = False

    def __call__(self, position: int, head: int) -> None:
        share = min(position / head, 1.0) if head else 1.0
        filled = int(share * PROGRESS_BAR_CHARS)
        bar = "#" * filled + "." * (PROGRESS_BAR_CHARS - filled)
        self._out.write(f"\r[{bar}] {share:4.0%} {position:,}/{head:,}")
        self._out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
