"""The auditor: replay the journal inside one consistent snapshot and check every invariant.

`Replay` is the pure part: fed entries one by one in position order, it checks each and keeps
only a balance per account, so memory grows with accounts, not with entries. `run_audit` is the
I/O around it: it opens a read-only snapshot as the auditor role, streams the journal through a
server-side cursor, and hands the write model, the projection and the head row to
`Replay.finish` for the checks that compare states. `main` is `ledger audit`.

Every broken invariant is a finding under one of `CHECKS`, with the position it is located at;
the report's first failure is the lowest such position (ties in the order of `CHECKS`).
"""

from __future__ import annotations

from audit.report import (  # noqa: F401
    AuditReport,
    Balances,
    CHECKS,
    CheckResult,
    EXAMPLES_IN_DETAIL_MAX,
    Failure,
    Findings,
    PROGRESS_BAR_CHARS,
    PROGRESS_EVERY_ENTRIES,
    Progress,
)
from audit.entries import (  # noqa: F401
    HashedEntry,
    canonical_bytes,
    entries_from_rows,
    hash_mismatches,
    hashed_form,
)
from audit.summary import (  # noqa: F401
    AccountsByText,
    Summary,
    VERIFIED_FIELDS,
    summarize,
)
from audit.replay import (  # noqa: F401
    HOLD_KINDS,
    Original,
    Replay,
    Start,
    _NEVER,
    _moment,
    _postings_text,
    _verified_fields,
)
from audit.tree_check import (  # noqa: F401
    TreeCheck,
)
from audit.snapshot import (  # noqa: F401
    _replay,
    _start,
    _unusable_signed_head,
    _with_holds,
    run_audit,
)
from audit.command import (  # noqa: F401
    ProgressBar,
    main,
    render,
)
