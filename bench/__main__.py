"""`python -m bench [--quick] [--only|--scenario KEY ...]`: measure every figure of the performance issue, print a table
and one JSON line. `--quick` runs each scenario with small numbers in a few seconds (the test suite does)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable

from bench import machine
from bench.scenarios import FULL, QUICK, Figure, Load, Sizes, burst, latency, many_devices, memory, sustained
from bench.stack import Stack

SCENARIOS = ("sustained_qos0", "sustained_qos1", "burst_qos1", "latency", "devices", "web", "memory", "browser",
             "history", "export", "rollups", "retention", "fleet-browser", "footprint")


def run(sizes: Sizes, only: set[str], say: Callable[[str], None]) -> list[Figure]:
    """Run the selected scenarios, each on a stack and a database of its own (what one leaves behind, a
    backlog, a locked database, cannot flatter or spoil the next); a scenario that fails is reported as
    such, the others still run."""
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

    def loaded(measure: Callable[[Stack, Load, Sizes], Figure]) -> Callable[[], Figure]:
        def fresh() -> Figure:
            with Stack(components=("broker", "client")) as stack, Load(stack, sizes.devices) as load:
                return measure(stack, load, sizes)
        return fresh

    attempt("sustained_qos0", loaded(lambda stack, load, sizes: sustained(stack, load, sizes, 0)))
    attempt("sustained_qos1", loaded(lambda stack, load, sizes: sustained(stack, load, sizes, 1)))
    attempt("burst_qos1", loaded(burst))
    attempt("latency", loaded(latency))
    attempt("memory", loaded(memory))

    def devices() -> Figure:
        with Stack(components=("broker", "client")) as stack:
            return many_devices(stack, sizes)

    attempt("devices", devices)
    if "browser" in only:
        from bench.browser import browser_latency

        def browser() -> Figure:
            with Stack(components=("broker", "client", "web")) as stack:
                return browser_latency(stack, sizes)

        attempt("browser", browser)
    if "footprint" in only:
        from bench.footprint import footprint

        attempt("footprint", lambda: footprint(sizes, say))
    if "fleet-browser" in only:
        from bench.fleet_browser import fleet_browser

        attempt("fleet-browser", lambda: fleet_browser(sizes))
    if "web" in only:
        from bench.web import web_latency

        attempt("web", lambda: web_latency(sizes))
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 0 when every figure was measured (met or not)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small numbers, a few seconds (smoke run)")
    parser.add_argument("--only", "--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), dest="only",
                        help="run only these scenarios (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = QUICK if args.quick else FULL
    host = machine.describe()
    print(f"sensorhub benchmark ({'quick smoke run' if args.quick else 'full'}) on {host['cpu']}, "
          f"{host['cores']} cores, {host['memory_gib']} GiB, {host['os']}, Python {host['python']}, "
          f"SQLite {host['sqlite']}, mosquitto {host['mosquitto']}", flush=True)
    figures = run(sizes, set(args.only), lambda text: print(text, file=sys.stderr, flush=True))
    print(table(figures))
    print(json.dumps({"quick": args.quick, "machine": host,
                      "figures": {f.key: {"value": f.value, "target": f.target, "ok": f.ok, **f.data}
                                  for f in figures}}))
    return 1 if any(f.value.startswith("FAILED") for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
