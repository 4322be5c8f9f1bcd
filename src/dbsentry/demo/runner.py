"""``dbsentry demo``: set everything up, print how to connect, serve until Ctrl-C (or run the tour).

The proxy always runs in the main thread's event loop (``run_server``), so Ctrl-C and
SIGTERM stop it the usual way; the tour runs in a worker thread and sets the stop event
through ``loop.call_soon_threadsafe`` when it is done.  Whatever happens, the embedded
PostgreSQL is stopped on the way out.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from dbsentry.config import ConfigError, LoadedConfig
from dbsentry.demo.embedded import EmbeddedPostgres, EmbeddedPostgresError, free_port, port_is_free
from dbsentry.demo.output import Printer
from dbsentry.demo.workspace import (
    PROD_DATABASE,
    STAGING_DATABASE,
    DemoLocked,
    IssuedToken,
    Workspace,
)

__all__ = ["DemoOptions", "run_demo"]

DEFAULT_PROXY_PORT = 6432
DEFAULT_HTTP_PORT = 8080
HOST = "127.0.0.1"
EXIT_FAILED = 1
EXIT_SETUP = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class DemoOptions:
    directory: Path
    port: int | None = None
    http_port: int | None = None
    tour: bool = False


def _pick_port(wanted: int | None, default: int, taken: set[int]) -> int:
    """The port asked for; else ``default`` when free; else any free port."""
    if wanted is not None:
        return wanted
    if default not in taken and port_is_free(HOST, default):
        return default
    while True:
        port = free_port(HOST)
        if port not in taken:
            return port


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _psql(port: int, dbname: str, issued: IssuedToken) -> str:
    return (
        f'psql "host={HOST} port={port} dbname={dbname} user={issued.identity.name} '
        f'password={issued.token} sslmode=require"'
    )


def _print_banner(
    out: Printer,
    ws: Workspace,
    pg: EmbeddedPostgres,
    loaded: LoadedConfig,
    tokens: dict[str, IssuedToken],
    setup_seconds: float,
) -> None:
    config = loaded.config
    proxy_host, proxy_port = config.listen.postgres_addr
    console = f"http://{config.listen.http}/"
    cfg = _display(ws.config_path)
    dba = tokens["dba"].token
    out.line()
    out.line(out.bold(f"dbsentry demo is running (ready in {setup_seconds:.1f}s)"))
    out.line(f"  proxy     {proxy_host}:{proxy_port}  (PostgreSQL protocol, TLS required)")
    out.line(f"  console   {console}")
    out.line(
        f"  upstream  embedded PostgreSQL {pg.version} on {pg.host}:{pg.port}: "
        f"connection prod -> database {PROD_DATABASE} (production), "
        f"staging -> {STAGING_DATABASE} (staging)"
    )
    out.line(f"  config    {cfg}")
    out.line()
    out.line(out.bold("Connect with psql as one of the demo identities:"))
    for issued in tokens.values():
        ident = issued.identity
        groups = ", ".join(ident.groups)
        out.line(f"  {out.cyan(ident.name)}  {ident.kind}, groups {groups}: {ident.description}")
        out.line(f"    {_psql(proxy_port, 'prod', issued)}")
    out.line(
        f"  (dbname=staging reaches the staging copy; tokens are kept in {_display(ws.tokens_path)})"
    )
    out.line()
    out.line(out.bold("Console:") + f" {console}  sign in with the DBA's token:")
    out.line(f"    {dba}")
    out.line()
    out.line(out.bold("Things to try:"))
    out.line("  as ai-agent (masked personal data, read-only in production):")
    out.line("    SELECT full_name, email, ssn, card_number, iban FROM customers LIMIT 5;")
    out.line("    SELECT * FROM customer_contacts LIMIT 3;   SELECT customer_email(42);")
    out.line("    DROP TABLE orders;                          -- blocked (42501)")
    out.line("  as analyst@example.com (schema changes in production need a DBA's approval):")
    out.line("    ALTER TABLE customers ADD COLUMN segment text;   -- refused, names a request id")
    out.line("    DELETE FROM orders WHERE 1=1;                   -- blocked: unbounded write")
    out.line("  as the DBA, approve it (or click Approve in the console):")
    out.line(f"    dbsentry approvals list -c {cfg}")
    out.line(f"    dbsentry approvals approve <request id> -c {cfg} --token {dba}")
    out.line("  then the analyst sends the ALTER TABLE again: it runs, once. To wait instead of")
    out.line("  failing, connect with options='-c dbsentry.approval=wait'.")
    out.line("  The audit trail:")
    out.line(f"    dbsentry audit tail -c {cfg}")
    out.line(f"    dbsentry audit verify -c {cfg}")
    out.line(f"    dbsentry report -c {cfg} --out {_display(ws.reports_dir / 'latest')}")
    out.line()
    out.line(f"A scripted tour of all this: dbsentry demo --tour --dir {_display(ws.dir)}")
    out.line(out.bold("Press Ctrl-C to stop."))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(options: DemoOptions, out: Printer | None = None) -> int:
    """Run the demo; the process exit code."""
    out = out or Printer()
    ws = Workspace(options.directory)
    try:
        ws.create()
        ws.lock()
    except DemoLocked as err:
        out.fail(f"dbsentry demo: {err}")
        return EXIT_SETUP
    except OSError as err:
        out.fail(f"dbsentry demo: cannot use {options.directory}: {err}")
        return EXIT_SETUP
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    pg: EmbeddedPostgres | None = None
    try:
        started = time.monotonic()
        pg = EmbeddedPostgres(ws.dir)
        pg.prepare()
        out.line(
            f"PostgreSQL: {'created a new cluster' if pg.created else 'reusing the cluster'} in "
            f"{_display(pg.root)}"
        )
        if pg.relocated:
            out.line(
                f"  (the server runs as an unprivileged user who cannot reach {_display(ws.dir)}, "
                "so the cluster lives outside it)"
            )
        pg.start()
        out.line(
            f"PostgreSQL {pg.version} started on {pg.host}:{pg.port} ({time.monotonic() - started:.1f}s)"
        )
        load_started = time.monotonic()
        loaded_dbs = ws.ensure_data(pg, progress=lambda msg: out.line(f"  {msg} ..."))
        if loaded_dbs:
            out.line(f"dataset loaded in {time.monotonic() - load_started:.1f}s")
        else:
            out.line("dataset already loaded (databases shop and shop_staging)")
        proxy_port = _pick_port(options.port, DEFAULT_PROXY_PORT, {pg.port})
        http_port = _pick_port(options.http_port, DEFAULT_HTTP_PORT, {pg.port, proxy_port})
        loaded = ws.write_config(pg, proxy_port, http_port)
        tokens = ws.ensure_tokens(loaded)
        setup_seconds = time.monotonic() - started
        if options.tour:
            return _run_tour(out, ws, pg, loaded, tokens, setup_seconds)
        return _run_foreground(out, ws, pg, loaded, tokens, started)
    except KeyboardInterrupt:
        out.line("interrupted")
        return EXIT_INTERRUPTED
    except (EmbeddedPostgresError, ConfigError, OSError) as err:
        out.fail(f"dbsentry demo: {err}")
        return EXIT_SETUP
    finally:
        if pg is not None:
            # A second Ctrl-C must not leave PostgreSQL running.
            if main_thread:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                pg.stop()
            finally:
                if main_thread:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
            out.line("PostgreSQL stopped")
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
        ws.unlock()


def _run_foreground(
    out: Printer,
    ws: Workspace,
    pg: EmbeddedPostgres,
    loaded: LoadedConfig,
    tokens: dict[str, IssuedToken],
    started: float,
) -> int:
    from dbsentry.server.proxy import install_uvloop
    from dbsentry.server.runner import run_server

    def ready() -> None:
        _print_banner(out, ws, pg, loaded, tokens, time.monotonic() - started)

    install_uvloop()
    asyncio.run(run_server(loaded, on_ready=ready))
    out.line("dbsentry stopped")
    return 0


def _run_tour(
    out: Printer,
    ws: Workspace,
    pg: EmbeddedPostgres,
    loaded: LoadedConfig,
    tokens: dict[str, IssuedToken],
    setup_seconds: float,
) -> int:
    from dbsentry.demo.tour import STEPS, Tour
    from dbsentry.server.proxy import install_uvloop
    from dbsentry.server.runner import run_server

    host, port = loaded.config.listen.postgres_addr
    cancelled = threading.Event()
    failed: list[int] = []
    crashed: list[BaseException] = []
    finished = threading.Event()
    tour = Tour(ws, loaded, pg, tokens, host, port, out, cancelled)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def work() -> None:
            try:
                failed.extend(tour.run())
            except BaseException as err:
                crashed.append(err)
            finally:
                finished.set()
                loop.call_soon_threadsafe(stop.set)

        def ready() -> None:
            out.line(
                f"dbsentry listening on {host}:{port}, console http://{loaded.config.listen.http}/ "
                f"(ready in {setup_seconds:.1f}s)"
            )
            out.line()
            out.line(out.bold("The tour:"))
            threading.Thread(target=work, name="demo-tour", daemon=True).start()

        await run_server(loaded, stop=stop, on_ready=ready)

    install_uvloop()
    asyncio.run(main())
    if not finished.is_set():  # stopped by Ctrl-C or SIGTERM while the tour ran
        cancelled.set()
        finished.wait(5)
        out.line("tour interrupted")
        return EXIT_INTERRUPTED
    out.line()
    if crashed:
        out.fail(f"the tour crashed: {type(crashed[0]).__name__}: {crashed[0]}")
        return EXIT_FAILED
    if failed:
        names = "; ".join(f"step {n} ({STEPS[n - 1]})" for n in failed)
        out.fail(f"tour failed: {names}")
        return EXIT_FAILED
    out.ok(out.bold(f"tour passed: all {len(STEPS)} steps behaved"))
    return 0
