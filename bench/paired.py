#!/usr/bin/env python3
"""Paired ratios: for each scenario, the median over rounds of one server's messages per
server-CPU-second divided by another's *in the same round*.

A round runs every server once per scenario, one after another, so a server and its
reference are measured about a minute apart, not a whole run apart. The machine flips
between two throughput levels every few tens of seconds (BENCHMARKS.md, "The machine's two
states"); the median of per-round ratios follows those flips less than the ratio of the
medians does, though it does not remove them.

usage: bench/paired.py TPUT.TXT [SERVER ...]
  TPUT.TXT   the harness's raw `bench:` lines (side_by_side.sh's tput.txt)
  SERVER     the servers to compare (default: the Sockeye servers of bench/servers.conf that ran), each against
             raw-epoll and fastwebsockets where those ran
"""
import re
import statistics
import sys
from collections import defaultdict

REFERENCES = ["raw-epoll", "fastwebsockets"]
DEFAULT = ["sockeye", "sockeye-example-ct", "sockeye-example-mt"]


def load(path):
    """{scenario: {round: {server: msgs per server-CPU-second}}}, in file order."""
    runs = defaultdict(lambda: defaultdict(dict))
    for line in open(path, encoding="utf-8"):
        if not line.startswith("bench:"):
            continue
        f = dict(re.findall(r"(\w+)=(\S+)", line))
        if "server_cpu" not in f or "msgs_per_s" not in f:
            continue
        cpu = float(f["server_cpu"].rstrip("%"))
        if cpu <= 0:
            continue
        per_cpu = float(f["msgs_per_s"]) / (cpu / 100)
        runs[f["scenario"]][int(f["round"])][f["server"]] = per_cpu
    return runs


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runs = load(sys.argv[1])
    ran = {server for rounds in runs.values() for r in rounds.values() for server in r}
    servers = sys.argv[2:] or [s for s in DEFAULT if s in ran]
    rows = []
    for server in servers:
        for ref in REFERENCES:
            if ref == server:
                continue
            cells = []
            for scenario, rounds in runs.items():
                ratios = [r[server] / r[ref] for r in rounds.values() if server in r and ref in r]
                if ratios:
                    cells.append((scenario, statistics.median(ratios), min(ratios), max(ratios), len(ratios)))
            if cells:
                rows.append((server, ref, cells))
    if not rows:
        print("paired: no round has both a server and a reference")
        return
    scenarios = list(runs)
    print("paired ratios: median over rounds of (server / reference in the same round) [min-max] rounds")
    print("| server | against | " + " | ".join(scenarios) + " |")
    print("|---|---|" + "---|" * len(scenarios))
    for server, ref, cells in rows:
        by = {c[0]: c for c in cells}
        out = []
        for s in scenarios:
            if s in by:
                _, med, lo, hi, n = by[s]
                out.append(f"{med:.2f} [{lo:.2f}-{hi:.2f}] {n}")
            else:
                out.append("-")
        print(f"| {server} | {ref} | " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
