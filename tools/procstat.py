"""What /proc says of a live process: its parent and its CPU ticks, for the benchmarks' accounting.

Apart from `tools.bench` so that the benchmarks it runs (`tools.audit_bench`) can read it without
importing the bench back: an import cycle.
"""

from __future__ import annotations

from pathlib import Path


def process_stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, CPU ticks in user and system mode, those of the children it has reaped) of a
    live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
