"""Database connections are opened one way, in `ledger/db.py` (`connect`, `connect_blocking`,
`make_pool`): no other runtime module calls a driver's connect or builds a pool itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("schemas", "ledger", "projector", "webhooks", "proofs", "audit", "api", "cli", "client")
POOL_CLASSES = {"AsyncConnectionPool", "ConnectionPool", "Pool"}


def test_only_ledger_db_opens_database_connections():
    openers = []
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "ledger" / "db.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and _opens_a_connection(node.func):
                    openers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert openers == []


def _opens_a_connection(func: ast.AST) -> bool:
    """`X.connect(...)` where X names a psycopg connection class (or the dialect's), or a pool built."""
    if isinstance(func, ast.Attribute) and func.attr == "connect":
        receiver = ast.unparse(func.value)
        return "Connection" in receiver or receiver.endswith(("connection_class", "psycopg"))
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in POOL_CLASSES
