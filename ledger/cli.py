"""The one command, `ledger`: dev, migrate, api, projector, audit, checkpoint, principal, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import uuid

import psycopg

from ledger import config, logs, store


def _run(coroutine) -> None:
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

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_once)
        with contextlib.suppress(asyncio.CancelledError):
            runner.run(_await(task))


async def _await(task):
    return await task


async def migrate(database_url: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await store.migrate(conn)


async def create_principal(database_url: str, role: str, name: str) -> tuple[uuid.UUID, str]:
    from api import auth

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        principal, token = await auth.create_principal(conn, role=role, name=name)
    return principal.id, token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledger", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("LEDGER_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="the whole local stack in the foreground, on embedded servers")
    dev.add_argument("--data-dir", default=".ledger")
    dev.add_argument("--port", type=int, default=int(os.environ.get("LEDGER_HTTP_PORT", 8080)))
    commands.add_parser("migrate", help="apply the schema migrations (LEDGER_DATABASE_URL)")
    commands.add_parser("api", help="serve the HTTP API")
    projector = commands.add_parser("projector", help="run the projector, or rebuild the read models")
    projector.add_argument("action", nargs="?", choices=["run", "rebuild"], default="run")
    audit = commands.add_parser("audit", help="replay the journal and check every invariant")
    audit.add_argument("--json", action="store_true", help="machine-readable report")
    audit.add_argument("--from", dest="from_position", type=int, default=0)
    audit.add_argument("--checkpoint", help="a signed checkpoint file to prove the journal against")
    checkpoint = commands.add_parser("checkpoint", help="sign the current journal head (Ed25519)")
    checkpoint.add_argument("--key", default=os.environ.get("LEDGER_SIGNING_KEY", ".ledger/signing-key.pem"))
    checkpoint.add_argument("--out", help="write the signed checkpoint to this file")
    checkpoint.add_argument("--export-public-key", action="store_true")
    principal = commands.add_parser("principal", help="create a principal and print its token (bootstrap)")
    principal.add_argument("--role", required=True, choices=["admin", "client", "vendor", "auditor"])
    principal.add_argument("--name", required=True)
    commands.add_parser("chaos", help="the bank test under faults (see `ledger chaos --help`)")
    bench = commands.add_parser("bench", help="the benchmark (see `ledger bench --help`)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["chaos"]:
        from ledger import chaos

        return chaos.main(argv[1:])
    if argv[:1] == ["bench"]:
        # argparse.REMAINDER drops options that come first (`bench --quick`): the bench parses
        # everything after its name with its own parser.
        from ledger import bench as bench_mod

        return bench_mod.main(argv[1:])
    args = parser.parse_args(argv)
    # `ledger dev` is watched by a person; the services' lines go to a collector as JSON.
    logs.configure(level=args.log_level, log_format=logs.chosen_format("text" if args.command == "dev" else None))
    settings = config.Settings.from_env()

    if args.command == "dev":
        from ledger import dev as dev_mod

        _run(dev_mod.run(data_dir=args.data_dir, port=args.port))
    elif args.command == "migrate":
        applied = asyncio.run(migrate(settings.database_url))
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    elif args.command == "api":
        from api.app import serve

        _run(serve(settings))
    elif args.command == "projector":
        from projector import consumer

        if args.action == "rebuild":
            print(f"rebuilt up to position {asyncio.run(_rebuild(settings))}")
        else:
            _run(consumer.serve(settings, metrics_listener=True))
    elif args.command == "audit":
        from ledger import audit as audit_mod

        return audit_mod.main(settings, as_json=args.json, from_position=args.from_position, checkpoint=args.checkpoint)
    elif args.command == "checkpoint":
        from ledger import checkpoint as checkpoint_mod

        return checkpoint_mod.main(settings, key_path=args.key, out=args.out, export_public_key=args.export_public_key)
    elif args.command == "principal":
        principal_id, token = asyncio.run(create_principal(settings.database_url, args.role, args.name))
        print(f"id: {principal_id}\ntoken: {token}")
    elif args.command == "bench":
        from ledger import bench as bench_mod

        return bench_mod.main(args.rest)
    return 0


async def _rebuild(settings: config.Settings) -> int:
    from ledger import db
    from projector import consumer

    pool = db.make_pool(settings.database_url, role="ledger_projector", size_max=2)
    await pool.open(wait=True)
    try:
        return await consumer.rebuild(settings, pool)
    finally:
        await pool.close()


if __name__ == "__main__":
    sys.exit(main())
