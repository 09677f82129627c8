"""`python -m bench [--quick] [--only|--scenario KEY ...] [--postgresql]`: measure every figure of the performance
issues, print a table and one JSON line. `--quick` runs each scenario with small numbers in a few seconds (the test
suite does). `--postgresql` measures the writer's figures on PostgreSQL instead of SQLite: a cluster of Debian's
`postgresql` package, started in a temporary directory with PostgreSQL's default durability (fsync on), one
database per scenario. `--scenario scale-out` runs on its own: sensorhub against a bare paho subscriber and
mosquitto_sub, on SQLite and PostgreSQL (bench/scaleout.py).
`--scenario 100k [--boards N] [--minutes M] [--edges E] [--storm-only] [--no-name-filter]` runs on its own too: a
fleet of simulated boards following the firmware's protocol on one broker, or over edge brokers bridged to it past
one broker process's open-file limit (bench/hundredk.py, bench/edges.py), on SQLite or, with `--postgresql`, on
PostgreSQL.
`--scenario alerts` measures what 100 alert rules over 1,000 devices cost ingest and how soon a silence rule fires
for 10,000 devices (bench/alerts.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from bench import machine
from bench.scenarios import FULL, QUICK, Figure, Load, Sizes, burst, latency, many_devices, memory, sustained
from bench.stack import Stack

SCENARIOS = ("sustained_qos0", "sustained_qos1", "burst_qos1", "latency", "devices", "web", "memory", "browser",
             "history", "export", "rollups", "retention", "broker_restart", "fleet-browser", "footprint", "commands",
             "worker_kill", "alerts")
#: What `--postgresql` measures: the writer's rates (the other scenarios read the SQLite file directly).
POSTGRESQL_SCENARIOS = ("sustained_qos0", "sustained_qos1", "burst_qos1")
#: Scenarios that run on their own, with their own stacks and references.
ALONE = ("scale-out", "pages-100k", "100k")


@contextmanager
def postgresql_databases() -> Iterator[Callable[[], str]]:
    """A durable throwaway PostgreSQL cluster; yields a function making a new empty database (its URL)."""
    from tests.pgcluster import Cluster, binaries

    bindir = binaries()
    if bindir is None:
        raise SystemExit("--postgresql needs PostgreSQL's server binaries: sudo apt-get install postgresql")
    with Cluster(bindir, durable=True) as cluster:
        yield cluster.create_database


def run(sizes: Sizes, only: set[str], say: Callable[[str], None],
        new_database: Callable[[], str | None] = lambda: None) -> list[Figure]:
    """Run the selected scenarios, each on a stack and a database of its own (what one leaves behind, a
    backlog, a locked database, cannot flatter or spoil the next; in a quick run the streams of readings share
    one); a scenario that fails is reported as such, the others still run."""
    figures: list[Figure] = []

    def attempt(key: str, measure: Callable[[], Figure | list[Figure]]) -> None:
        if key not in only:
            return
        say(f"measuring {key} ...")
        started = time.monotonic()
        try:
            measured = measure()
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            measured = Figure(key, key, f"FAILED: {err}", "", False)
        for figure in measured if isinstance(measured, list) else [measured]:
            say(f"  {figure.label}: {figure.value} ({time.monotonic() - started:.0f} s)")
            figures.append(figure)

    with ExitStack() as shared:
        streams: list[tuple[Stack, Load]] = []

        def loaded(measure: Callable[[Stack, Load, Sizes], Figure]) -> Callable[[], Figure]:
            def fresh() -> Figure:
                with Stack(components=("broker", "client"), database_url=new_database()) as stack, \
                        Load(stack, sizes.devices) as load:
                    return measure(stack, load, sizes)

            def again() -> Figure:
                # The smoke run proves that each stream runs and loses nothing, not its figure: one stack for all
                # (each counts from where the last one left off), not five starts of three Python processes each.
                if not streams:
                    stack = shared.enter_context(Stack(components=("broker", "client"),
                                                       database_url=new_database()))
                    streams.append((stack, shared.enter_context(Load(stack, sizes.devices))))
                return measure(*streams[0], sizes)
            return again if sizes is QUICK else fresh

        attempt("sustained_qos0", loaded(lambda stack, load, sizes: sustained(stack, load, sizes, 0)))
        attempt("sustained_qos1", loaded(lambda stack, load, sizes: sustained(stack, load, sizes, 1)))
        attempt("burst_qos1", loaded(burst))
        attempt("latency", loaded(latency))
        attempt("memory", loaded(memory))  # last: it locks the database and floods the client

        def devices() -> Figure:
            with Stack(components=("broker", "client")) as stack:
                return many_devices(stack, sizes)

        attempt("devices", devices)
        # A quick run's browser scenarios share one stack with the web server (1.7 s of CPU to start) and one
        # Chromium (bench/browser.py), closed after them: what the smoke run proves is that they measure every figure.
        web = shared.enter_context(ExitStack())
        if only & {"browser", "fleet-browser"} and sizes is QUICK:
            from bench.browser import close_kept

            web.callback(close_kept)

        web_stacks: list[Stack] = []

        def web_stack() -> Stack:
            """The quick run's stack with the web server, started once."""
            if not web_stacks:
                web_stacks.append(web.enter_context(Stack(components=("broker", "client", "web"))))
            return web_stacks[0]

        if "browser" in only:
            from bench.browser import browser_latency

            def browser() -> Figure:
                if sizes is QUICK:
                    return browser_latency(web_stack(), sizes)
                with Stack(components=("broker", "client", "web")) as stack:
                    return browser_latency(stack, sizes)

            attempt("browser", browser)
        if "footprint" in only:
            from bench.footprint import footprint

            attempt("footprint", lambda: footprint(sizes, say))
        if "fleet-browser" in only:
            from bench.fleet_browser import fleet_browser

            attempt("fleet-browser", lambda: fleet_browser(sizes, web_stack() if sizes is QUICK else None))
        web.close()
        if "web" in only:
            from bench.web import web_latency

            attempt("web", lambda: web_latency(sizes))
        if "broker_restart" in only:
            from bench.restart import broker_restart

            attempt("broker_restart", lambda: broker_restart(sizes))
        if "commands" in only:
            from bench.commands import led_commands

            attempt("commands", lambda: led_commands(sizes))
        if "worker_kill" in only:
            from bench.workerkill import worker_kill

            attempt("worker_kill", lambda: worker_kill(sizes))
        if "alerts" in only:
            from bench.alerts import run_alerts

            attempt("alerts", lambda: run_alerts(quick=sizes is QUICK))
        if only & {"history", "export", "rollups", "retention"}:
            from bench.history import HISTORY_FULL, HISTORY_QUICK, run_history

            run_history(sizes, HISTORY_QUICK if sizes is QUICK else HISTORY_FULL, only, attempt)
    return figures


def table(figures: list[Figure]) -> str:
    """The results as a fixed-width table."""
    rows = [("figure", "measured", "target", "")]
    rows += [(f.label, f.value, f.target, {True: "ok", False: "MISSED", None: ""}[f.ok]) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _scale_out(quick: bool) -> int:
    """The scale-out scenario: one table, one JSON line."""
    from bench.scaleout import SCALE_FULL, SCALE_QUICK, scale_out
    from tests.pgcluster import binaries

    host = machine.describe()
    databases: list[tuple[str, Callable[[], str | None]]] = [("SQLite", lambda: None)]
    with ExitStack() as stack:
        if binaries() is not None:
            host["database"] = "PostgreSQL " + machine.postgresql_version()
            databases.append(("PostgreSQL", stack.enter_context(postgresql_databases())))
        print(f"sensorhub scale-out benchmark ({'quick smoke run' if quick else 'full'}) on {host['cpu']}, "
              f"{host['cores']} cores, {host['memory_gib']} GiB, {host['os']}, Python {host['python']}, "
              f"SQLite {host['sqlite']}, mosquitto {host['mosquitto']}, {host.get('database', 'no PostgreSQL')}",
              flush=True)
        figures = scale_out(SCALE_QUICK if quick else SCALE_FULL, databases,
                            lambda text: print(text, file=sys.stderr, flush=True))
    print(table(figures))
    print(json.dumps({"quick": quick, "scenario": "scale-out", "machine": host,
                      "figures": {f.key: {"value": f.value, "target": f.target, "ok": f.ok, **f.data}
                                  for f in figures}}))
    return 0


def _hundred_k(quick: bool, postgresql: bool, boards: int | None, minutes: float | None,
               edges: int | None = None, storm_only: bool = False, name_filter: bool = True) -> int:
    """The 100k scenario: one table, one JSON line."""
    import dataclasses

    from bench.hundredk import HundredK, hundred_k, most_boards
    from bench.hundredk import quick as quick_sizes

    sizes = quick_sizes() if quick else HundredK(boards=most_boards())
    if boards is not None:
        sizes = dataclasses.replace(sizes, boards=boards)
    if minutes is not None:
        sizes = dataclasses.replace(sizes, steady_minutes=minutes)
    if edges is not None:
        sizes = dataclasses.replace(sizes, edges=edges)
    sizes = dataclasses.replace(sizes, storm_only=storm_only, name_filter=name_filter)
    host = machine.describe()
    host["database"] = ("PostgreSQL " + machine.postgresql_version()) if postgresql else f"SQLite {host['sqlite']}"
    host["open_files"] = most_boards() + 100
    print(f"sensorhub 100k benchmark ({'quick smoke run' if quick else 'full'}) on {host['cpu']}, {host['cores']} "
          f"cores, {host['memory_gib']} GiB, {host['os']}, Python {host['python']}, mosquitto {host['mosquitto']}, "
          f"{host['database']}; {sizes.boards:,} boards (the most one broker process may hold here: "
          f"{most_boards():,}, its open-file limit less {100})"
          + (f", over {sizes.edge_count()} edge brokers bridged to the central one" if sizes.edge_count() else "")
          + ("; the power cut only" if storm_only else "")
          + ("; without the broker's name-assignment filter" if not name_filter else ""),
          flush=True)
    figures = hundred_k(sizes, postgresql, lambda text: print(text, file=sys.stderr, flush=True))
    print(table(figures))
    print(json.dumps({"quick": quick, "scenario": "100k", "postgresql": postgresql, "machine": host,
                      "sizes": dataclasses.asdict(sizes),
                      "figures": {f.key: {"value": f.value, "target": f.target, "ok": f.ok, **f.data}
                                  for f in figures}}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 0 when every figure was measured (met or not)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small numbers, a few seconds (smoke run)")
    parser.add_argument("--only", "--scenario", nargs="+", choices=SCENARIOS + ALONE, default=None, dest="only",
                        help="run only these scenarios (default: all but scale-out, which runs on its own)")
    parser.add_argument("--postgresql", action="store_true",
                        help=f"on PostgreSQL (a throwaway cluster): {', '.join(POSTGRESQL_SCENARIOS)}")
    parser.add_argument("--boards", type=int, default=None,
                        help="100k: how many boards (default: the most one broker process may hold here)")
    parser.add_argument("--minutes", type=float, default=None, help="100k: minutes of steady state (default 3)")
    parser.add_argument("--edges", type=int, default=None,
                        help="100k: edge brokers bridged to the central one (default: as many as the boards need "
                             "beyond one broker process's open-file limit; 0 when one holds them all)")
    parser.add_argument("--storm-only", action="store_true",
                        help="100k: the power cut only (the boards known to the database, all starting at once)")
    parser.add_argument("--no-name-filter", action="store_false", dest="name_filter",
                        help="100k: the brokers without their name-assignment filter (every waiting board hears "
                             "every assignment, as before it)")
    args = parser.parse_args(argv)
    if args.only and "pages-100k" in args.only:
        if len(args.only) > 1:
            parser.error("pages-100k runs on its own")
        from bench.pages100k import main as pages_100k

        return pages_100k(args.quick, args.postgresql)
    if args.only and "100k" in args.only:
        if len(args.only) > 1:
            parser.error("100k runs on its own")
        return _hundred_k(args.quick, args.postgresql, args.boards, args.minutes, args.edges, args.storm_only,
                          args.name_filter)
    if args.only and "scale-out" in args.only:
        if len(args.only) > 1:
            parser.error("scale-out runs on its own")
        return _scale_out(args.quick)
    only = set(args.only or (POSTGRESQL_SCENARIOS if args.postgresql else SCENARIOS))
    if args.postgresql and not only <= set(POSTGRESQL_SCENARIOS):
        parser.error(f"--postgresql measures {', '.join(POSTGRESQL_SCENARIOS)} only")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = QUICK if args.quick else FULL
    host = machine.describe()
    if args.postgresql:
        host["database"] = "PostgreSQL " + machine.postgresql_version()
    print(f"sensorhub benchmark ({'quick smoke run' if args.quick else 'full'}) on {host['cpu']}, "
          f"{host['cores']} cores, {host['memory_gib']} GiB, {host['os']}, Python {host['python']}, "
          f"SQLite {host['sqlite']}, mosquitto {host['mosquitto']}"
          + (f", database: {host['database']}" if args.postgresql else ""), flush=True)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.postgresql:
        with postgresql_databases() as new_database:
            figures = run(sizes, only, say, new_database)
    else:
        figures = run(sizes, only, say)
    print(table(figures))
    print(json.dumps({"quick": args.quick, "postgresql": args.postgresql, "machine": host,
                      "figures": {f.key: {"value": f.value, "target": f.target, "ok": f.ok, **f.data}
                                  for f in figures}}))
    return 1 if any(f.value.startswith("FAILED") for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
