#!/usr/bin/env python3
"""Fail-over of the node leading the most, repeated in one cluster whose surviving nodes stay warm.

Starts N benchmark node processes (`HighlanderPG.Benchmarks node --kind scale`, each registering the same singletons),
then, each round, SIGKILLs (or SIGTERMs, --term) the live node leading the most, waits until every singleton it ran
runs elsewhere, prints how long that took (from the nodes' own START lines, CLOCK_MONOTONIC) and the CPU each survivor
used meanwhile (/proc), and starts a fresh node in its place. Unlike `--suite scale`, every survivor but the newest has
been through earlier rounds, so the JIT's first-time cost is mostly paid.

    dotnet build HighlanderPG.slnx -c Release
    HIGHLANDER_CONNECTION='Host=...;Username=...' python3 bench/scripts/failover-chain.py --rounds 8
"""
import argparse, os, shutil, signal, statistics, subprocess, sys, threading, time

here = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--singletons", type=int, default=1000)
parser.add_argument("--nodes", type=int, default=10, help="nodes alive at each fault (default 10)")
parser.add_argument("--rounds", type=int, default=6)
parser.add_argument("--term", action="store_true", help="SIGTERM (graceful) instead of SIGKILL")
parser.add_argument("--settle", type=float, default=4.0, help="seconds between rounds (default 4)")
parser.add_argument("--perf", metavar="DIR", help="record each round with `perf record -a` into DIR/round-N.data (nodes write perf maps)")
parser.add_argument("--binary", default=os.path.join(here, "..", "HighlanderPG.Benchmarks", "bin", "Release", "net10.0", "HighlanderPG.Benchmarks"))
args = parser.parse_args()

connection = os.environ.get("HIGHLANDER_CONNECTION")
if not connection:
    sys.exit("failover-chain: set HIGHLANDER_CONNECTION to the PostgreSQL connection string to use")
if not os.access(args.binary, os.X_OK):
    sys.exit(f"failover-chain: {args.binary} is missing: build first (dotnet build HighlanderPG.slnx -c Release)")
if args.nodes < 2 or args.singletons < 1 or args.rounds < 1:
    sys.exit("failover-chain: --nodes must be at least 2, --singletons and --rounds at least 1")

env = dict(os.environ, HIGHLANDER_BENCH_NODE_CONNECTION=connection)
if args.perf:
    if not shutil.which("perf"):
        sys.exit("failover-chain: --perf needs `perf` on PATH (Debian: apt-get install linux-perf)")
    os.makedirs(args.perf, exist_ok=True)
    env["DOTNET_PerfMapEnabled"] = "1"
    env["DOTNET_EnableWriteXorExecute"] = "0"  # JIT code in anonymous memory, where perf finds the perf map
namespace = f"chain-{os.getpid()}"
nodes = {}


def cpu_ms(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def start():
    node_id = f"n{len(nodes)}"
    process = subprocess.Popen([args.binary, "node", "--kind", "scale", "--namespace", namespace, "--node-id", node_id,
                                "--count", str(args.singletons)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=env, text=True)
    node = nodes[node_id] = {"process": process, "starts": [], "stops": [], "running": set(), "ready": threading.Event()}

    def read():
        for line in process.stdout:
            parts = line.split()
            if parts and parts[0] == "READY":
                node["ready"].set()
            elif len(parts) == 3 and parts[0] == "START":
                node["starts"].append(int(parts[2]))
                node["running"].add(parts[1])
            elif len(parts) == 3 and parts[0] == "STOP":
                node["running"].discard(parts[1])
                node["stops"].append(int(parts[2]))

    threading.Thread(target=read, daemon=True).start()
    if not node["ready"].wait(120):
        sys.exit(f"failover-chain: node {node_id} did not start within 120 s")
    return node_id


def live():
    return [k for k, n in nodes.items() if n["process"].poll() is None]


lasts = []
try:
    first = start()
    while len(nodes[first]["running"]) < args.singletons:
        time.sleep(0.05)
    for _ in range(args.nodes - 1):
        start()
    for round_ in range(1, args.rounds + 1):
        time.sleep(args.settle)
        victim = max(live(), key=lambda k: len(nodes[k]["running"]))
        survivors = [k for k in live() if k != victim]
        need = len(nodes[victim]["running"])
        before = {k: len(nodes[k]["starts"]) for k in survivors}
        cpu_before = {k: cpu_ms(nodes[k]["process"].pid) for k in survivors}
        recorder = None
        if args.perf:
            recorder = subprocess.Popen(["perf", "record", "-a", "-F", "4999", "-g", "-o", os.path.join(args.perf, f"round-{round_}.data")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        t0 = time.monotonic_ns()
        if args.term:
            wall = time.time()
            print(f"round {round_}: SIGTERM at {time.strftime('%H:%M:%S', time.gmtime(wall))}.{int(wall * 1000) % 1000:03d} UTC (to find it in the server's log)", flush=True)
        nodes[victim]["process"].send_signal(signal.SIGTERM if args.term else signal.SIGKILL)
        deadline = time.monotonic() + 60
        while sum(len(nodes[k]["starts"]) - before[k] for k in survivors) < need and time.monotonic() < deadline:
            time.sleep(0.005)
        cpu_after = {k: cpu_ms(nodes[k]["process"].pid) for k in survivors}
        if recorder:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
        nodes[victim]["process"].wait()
        exited = (time.monotonic_ns() - t0) / 1e6
        takes = sorted((t - t0) / 1e6 for k in survivors for t in nodes[k]["starts"][before[k]:])
        stopped = f"; its last child returned after {(max(nodes[victim]['stops']) - t0) / 1e6:.0f} ms" if args.term and nodes[victim]["stops"] else ""
        if len(takes) < need:
            print(f"round {round_}: only {len(takes)} of {need} singletons ran elsewhere within 60 s", flush=True)
            sys.exit(1)
        got = {k: len(nodes[k]["starts"]) - before[k] for k in survivors}
        winner = max(got, key=got.get)
        losers = sorted(cpu_after[k] - cpu_before[k] for k in survivors if k != winner)
        lasts.append(takes[-1])
        if args.perf:
            print(f"round {round_}: t0 {t0 / 1e9:.6f} s; pids " + ", ".join(f"{k}={nodes[k]['process'].pid}" for k in [victim] + survivors), flush=True)
        print(f"round {round_}: {victim} ran {need}; elsewhere first {takes[0]:.0f} ms, p50 {takes[len(takes) // 2]:.0f} ms, "
              f"last {takes[-1]:.0f} ms; victim exited after {exited:.0f} ms{stopped}; taken by {', '.join(f'{k}={v}' for k, v in got.items() if v)}; "
              f"CPU in that time: winner {cpu_after[winner] - cpu_before[winner]} ms, others {losers} ms", flush=True)
        start()
    print(f"{'SIGTERM' if args.term else 'SIGKILL'} x {len(lasts)}: last elsewhere {', '.join(f'{x:.0f}' for x in sorted(lasts))} ms; "
          f"median {statistics.median(lasts):.0f} ms")
finally:
    for node in nodes.values():
        if node["process"].poll() is None:
            node["process"].stdin.close()
    for node in nodes.values():
        try:
            node["process"].wait(30)
        except subprocess.TimeoutExpired:
            node["process"].kill()
