"""``dbsentry demo``: set everything up, print how to connect, serve until Ctrl-C (or run the tour).

The proxy always runs in the main thread's event loop (``run_server``), so Ctrl-C and
SIGTERM stop it the usual way; the tour runs in a worker thread and sets the stop event
through ``loop.call_soon_threadsafe`` when it is done.  Whatever happens, the embedded
PostgreSQL is stopped on the way out.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from dbsentry.config import ConfigError, LoadedConfig
from dbsentry.demo.banner import dbsentry_command, path_arg, print_banner
from dbsentry.demo.embedded import EmbeddedPostgres, EmbeddedPostgresError, free_port, port_is_free
from dbsentry.demo.mysql_leg import DATABASE as MYSQL_DATABASE
from dbsentry.demo.mysql_leg import MySQLServer, ensure_mysql_data, find_mysql
from dbsentry.demo.output import Printer
from dbsentry.demo.workspace import (
    DemoLocked,
    IssuedToken,
    Upstream,
    UpstreamAddress,
    Workspace,
)

if TYPE_CHECKING:
    from dbsentry.demo.tour import Tour

__all__ = ["DemoOptions", "run_demo"]

DEFAULT_PROXY_PORT = 6432
DEFAULT_HTTP_PORT = 8080
DEFAULT_MYSQL_PORT = 3307
HOST = "127.0.0.1"
# How long a tour waits for a demo that is still starting in another process.
ATTACH_WAIT_SECONDS = 120.0
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
        if options.tour:
            return _tour_running_demo(out, ws, err)
        _explain_locked(out, ws, err)
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
        mysql = _mysql_leg(out, ws, {pg.port, proxy_port, http_port})
        loaded = ws.write_config(pg, proxy_port, http_port, mysql)
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


def _mysql_leg(out: Printer, ws: Workspace, taken: set[int]) -> tuple[MySQLServer, int] | None:
    """The MySQL leg's server (loaded) and the port of dbsentry's MySQL listener, or None
    (said in one line) when no server is reachable or it cannot be set up."""
    import pymysql

    server, line = find_mysql()
    out.line(line)
    if server is None:
        return None
    try:
        started = time.monotonic()
        if ensure_mysql_data(server, ws.mysql_password_path, progress=lambda msg: out.line(f"  {msg} ...")):
            out.line(f"  MySQL dataset loaded in {time.monotonic() - started:.1f}s")
    except pymysql.MySQLError as err:
        out.line(f"MySQL leg skipped: could not set up {MYSQL_DATABASE} on {server.host}:{server.port}: {err}")
        return None
    return server, _pick_port(None, DEFAULT_MYSQL_PORT, taken | {server.port})


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
        upstream = f"embedded PostgreSQL {pg.version} on {pg.host}:{pg.port}"
        print_banner(out, ws, upstream, loaded, tokens, time.monotonic() - started)

    install_uvloop()
    asyncio.run(run_server(loaded, on_ready=ready))
    out.line("dbsentry stopped")
    return 0


def _explain_locked(out: Printer, ws: Workspace, err: DemoLocked) -> None:
    """What to do when another demo holds the directory."""
    out.fail(f"dbsentry demo: {err}")
    cmd = dbsentry_command()
    try:
        loaded, _ = ws.load_running()
        listen = loaded.config.listen
        out.line(
            f"  console http://{listen.http}/, proxy {listen.postgres}, tokens in {ws.tokens_path}"
        )
    except (ConfigError, OSError, ValueError):
        pass
    stop = f" (or: kill {err.pid})" if err.pid is not None else ""
    out.line(f"  Stop it with Ctrl-C in its terminal{stop}. To tour the running demo:")
    out.line(f"    {cmd} demo --tour --dir {path_arg(ws.dir)}")
    out.line("  To run a second, separate demo, give it a directory of its own:")
    out.line(f"    {cmd} demo --dir {path_arg(ws.dir.with_name(ws.dir.name + '-2'))}")


def _proxy_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _tour_running_demo(out: Printer, ws: Workspace, err: DemoLocked) -> int:
    """The tour, against the demo another process runs with this directory."""
    out.line(f"dbsentry demo: {err}; the tour runs against it")
    deadline = time.monotonic() + ATTACH_WAIT_SECONDS
    while True:
        try:
            loaded, tokens = ws.load_running()
        except (ConfigError, OSError, ValueError):
            loaded = None
        if loaded is not None and _proxy_answers(*loaded.config.listen.postgres_addr):
            break
        if time.monotonic() > deadline:
            out.fail(
                f"dbsentry demo: the demo running with {ws.dir} did not start serving within "
                f"{ATTACH_WAIT_SECONDS:.0f}s; see its terminal"
            )
            return EXIT_SETUP
        time.sleep(0.5)
    prod = loaded.config.connections["prod"]
    host, port = loaded.config.listen.postgres_addr
    out.line(f"dbsentry listening on {host}:{port}, console http://{loaded.config.listen.http}/")
    out.line()
    out.line(out.bold("The tour:"))
    cancelled = threading.Event()
    return _tour_outcome(
        out, _make_tour(out, ws, UpstreamAddress(prod.host, prod.port), loaded, tokens, cancelled)
    )


def _make_tour(
    out: Printer,
    ws: Workspace,
    pg: Upstream,
    loaded: LoadedConfig,
    tokens: dict[str, IssuedToken],
    cancelled: threading.Event,
) -> Tour:
    from dbsentry.demo.tour import Tour

    host, port = loaded.config.listen.postgres_addr
    return Tour(ws, loaded, pg, tokens, host, port, out, cancelled)


def _tour_outcome(out: Printer, tour: Tour) -> int:
    """Run ``tour`` here and now; the exit code."""
    try:
        failed = tour.run()
    except KeyboardInterrupt:
        tour.cancelled.set()
        out.line("tour interrupted")
        return EXIT_INTERRUPTED
    return _verdict(out, failed, None, tour.titles())


def _verdict(out: Printer, failed: list[int], crashed: BaseException | None, titles: tuple[str, ...]) -> int:
    """Say how the tour went; the exit code."""
    out.line()
    if crashed is not None:
        out.fail(f"the tour crashed: {type(crashed).__name__}: {crashed}")
        return EXIT_FAILED
    if failed:
        names = "; ".join(f"step {n} ({titles[n - 1]})" for n in failed)
        out.fail(f"tour failed: {names}")
        return EXIT_FAILED
    out.ok(out.bold(f"tour passed: all {len(titles)} steps behaved"))
    return 0


def _run_tour(
    out: Printer,
    ws: Workspace,
    pg: EmbeddedPostgres,
    loaded: LoadedConfig,
    tokens: dict[str, IssuedToken],
    setup_seconds: float,
) -> int:
    from dbsentry.server.proxy import install_uvloop
    from dbsentry.server.runner import run_server

    host, port = loaded.config.listen.postgres_addr
    cancelled = threading.Event()
    failed: list[int] = []
    crashed: list[BaseException] = []
    finished = threading.Event()
    tour = _make_tour(out, ws, pg, loaded, tokens, cancelled)

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
    return _verdict(out, failed, crashed[0] if crashed else None, tour.titles())
