#!/usr/bin/env python3
"""Mutation testing of the Redis script (crates/tollgate-redis/src/tollgate.lua).

Applies each mutation of scripts/lua-mutants.txt to the script, one at a time, runs the Redis
tests that run on Redis's own clock against it (the script is embedded with include_str!, so
cargo rebuilds the test binary for each mutant), and prints a table: mutant, killed or survived,
and by which tests. The original script is restored whatever happens (an error, Ctrl-C, a kill
signal). Exits 1 if any mutant survived, 2 if the list no longer matches the script.

    scripts/lua-mutants.py                      # every mutant; table on stdout
    scripts/lua-mutants.py --only gcra-admit-lt,ttl-rounded-down
    scripts/lua-mutants.py --markdown crates/tollgate-redis/LUA_MUTANTS-run.md
    scripts/lua-mutants.py --check              # only check that every snippet matches once

Needs what the Redis tests need (Docker and scripts/redis-image.sh, or redis-server on PATH).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "crates", "tollgate-redis", "src", "tollgate.lua")
LIST = os.path.join(ROOT, "scripts", "lua-mutants.txt")
# The test modules that run on Redis's clock. Explicit-time tests (conformance, differential,
# corruption) are left out on purpose: a mutant they alone kill is a mutant production would
# not notice in its TTLs.
FILTERS = ["realtime::", "keyspace::", "http_keyspace::"]


class ListError(Exception):
    pass


def parse(path):
    """The mutants of the list: [{id, why, old, new}]."""
    mutants, current, section, lines = [], None, None, []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f.read().split("\n"), 1):
            where = f"{path}:{number}"
            if section is None:
                if line.startswith("#") or not line.strip():
                    continue
                if line.startswith("mutant:"):
                    current = {"id": line[len("mutant:"):].strip(), "why": "", "line": number}
                    mutants.append(current)
                elif line.startswith("why:") and current is not None:
                    current["why"] = line[len("why:"):].strip()
                elif line == "<<<" and current is not None:
                    section, lines = "old", []
                else:
                    raise ListError(f"{where}: unexpected line {line!r}")
            elif line == "===" and section == "old":
                current["old"], section, lines = "\n".join(lines), "new", []
            elif line == ">>>" and section == "new":
                current["new"], section, current = "\n".join(lines), None, None
            else:
                lines.append(line)
    if section is not None:
        raise ListError(f"{path}: the last block is not closed with >>>")
    ids = [m["id"] for m in mutants]
    for m in mutants:
        if "new" not in m:
            raise ListError(f"{path}:{m['line']}: mutant {m['id']} has no <<< === >>> block")
        if ids.count(m["id"]) > 1:
            raise ListError(f"{path}: mutant id {m['id']} is used twice")
    return mutants


def mutate(source, mutant):
    """The script with the mutant applied; fails unless its snippet occurs exactly once."""
    # Whole lines only: the snippet must start and end at line boundaries.
    old = "\n" + mutant["old"] + "\n"
    count = ("\n" + source).count(old)
    if count != 1:
        raise ListError(
            f"mutant {mutant['id']}: its snippet occurs {count} times in {SCRIPT} "
            f"(must be exactly once):\n{mutant['old']}"
        )
    new = "\n" + mutant["new"] + "\n" if mutant["new"] else "\n"
    return ("\n" + source).replace(old, new, 1)[1:]


def run_tests(filters):
    """Runs the Redis test target with `filters`; returns (passed, failed test names, output)."""
    cmd = ["cargo", "test", "-q", "-p", "tollgate-redis", "--test", "redis", "--"] + filters
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    # libtest lists the failed tests, indented, under a "failures:" line (after the details).
    failed = []
    for block in re.findall(r"^failures:\n((?:    \S+\n)+)", output, re.M):
        failed = [name.strip() for name in block.splitlines()]
    if proc.returncode != 0 and not failed:
        failed = ["(build or harness failure; see output)"]
    return proc.returncode == 0, failed, output


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", default=LIST)
    parser.add_argument("--only", help="comma-separated mutant ids")
    parser.add_argument("--filter", action="append", help="test filters (default: %s)" % FILTERS)
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--check", action="store_true", help="only check the list")
    parser.add_argument("--verbose", action="store_true", help="print test output of survivors")
    args = parser.parse_args()

    with open(SCRIPT, encoding="utf-8") as f:
        original = f.read()
    try:
        mutants = parse(args.list)
        if args.only:
            wanted = set(args.only.split(","))
            unknown = wanted - {m["id"] for m in mutants}
            if unknown:
                raise ListError(f"unknown mutant ids: {sorted(unknown)}")
            mutants = [m for m in mutants if m["id"] in wanted]
        mutated = [(m, mutate(original, m)) for m in mutants]
    except ListError as e:
        print(f"lua-mutants: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(mutated)} mutants, every snippet matches exactly once")
        return 0
    filters = args.filter or FILTERS

    # Restore the script whatever happens: on a signal, turn it into an exception so that the
    # `finally` below runs.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    def write(text):
        with open(SCRIPT, "w", encoding="utf-8") as f:
            f.write(text)

    rows, started = [], time.monotonic()
    try:
        print(f"baseline: {' '.join(filters)} on the unmutated script ...", flush=True)
        passed, failed, output = run_tests(filters)
        if not passed:
            print(output)
            print(f"lua-mutants: the tests fail without any mutation: {failed}", file=sys.stderr)
            return 2
        for i, (m, text) in enumerate(mutated, 1):
            write(text)
            t = time.monotonic()
            passed, failed, output = run_tests(filters)
            took = time.monotonic() - t
            status = "survived" if passed else "killed"
            print(f"[{i}/{len(mutated)}] {m['id']}: {status} ({took:.0f} s)"
                  + (f" by {', '.join(failed)}" if failed else ""), flush=True)
            if passed and args.verbose:
                print(output)
            rows.append((m, status, failed))
    finally:
        write(original)
    total = time.monotonic() - started

    lines = [
        "| mutant | what it breaks | result | killed by |",
        "| --- | --- | --- | --- |",
    ]
    for m, status, failed in rows:
        by = ", ".join(f"`{name}`" for name in failed) or "-"
        lines.append(f"| `{m['id']}` | {m['why']} | {status} | {by} |")
    killed = sum(1 for _, s, _ in rows if s == "killed")
    summary = (f"{killed} of {len(rows)} mutants killed, tests `{' '.join(filters)}`, "
               f"{total / 60:.1f} min")
    table = "\n".join(lines)
    print()
    print(table)
    print()
    print(summary)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table + "\n\n" + summary + "\n")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
