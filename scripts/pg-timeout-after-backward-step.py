#!/usr/bin/env python3
"""Shows PostgreSQL's timeouts coming late after a backward step of the server's wall clock, even when they are set
after the clock was stepped back again (docs/lease-protocol.md, "Steps of the server's wall clock").

PostgreSQL keeps one interval timer per backend and measures due times on the wall clock. A timer signal that comes
while the clock is behind finds nothing due and re-arms the interval timer for the nearest active timeout, X seconds
too far. A later timeout due after that one does not re-arm it: it fires with it, up to X late. The nearest active
timeout that outlives statements is the idle-statistics flush (up to 10 s, PGSTAT_IDLE_INTERVAL).

Steps THIS MACHINE's wall clock (clock_settime: root, and the server must run on this machine) back by STEP seconds
for 3.1 s, then forward again; STEP 0 is the control. Uses psql with the usual PG* environment variables.

    PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres python3 scripts/pg-timeout-after-backward-step.py 20
"""
import subprocess
import sys
import time

step = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
psql = ["psql", "-X", "-q", "-At"]


def query(sql):
    return subprocess.run(psql + ["-c", sql], capture_output=True, text=True, check=True).stdout.strip()


def step_clock(seconds):
    time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME) + seconds)


query("CREATE TABLE IF NOT EXISTS timeout_after_step (x int)")
session = subprocess.Popen(psql, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


def send(sql):
    session.stdin.write(sql + "\n")
    session.stdin.flush()


send("SELECT pg_backend_pid();")
pid = int(session.stdout.readline())
t0 = time.monotonic()


def at(seconds):
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))


at(4.6)
send("INSERT INTO timeout_after_step VALUES (1);")  # its statistics are flushed when the session goes idle
# A transaction that stays idle briefly arms idle_in_transaction_session_timeout (1 s) and disarms it: its timer
# signal stays pending for 6.0 s. It commits 0.9 s after the last flush, so its statistics stay pending: the backend
# arms its idle-statistics timer (10 s, due at 15.5 s).
at(5.0)
send("BEGIN; SET LOCAL idle_in_transaction_session_timeout = 1000; SELECT 1;")
at(5.5)
send("INSERT INTO timeout_after_step VALUES (2); COMMIT;")
at(5.7)
if step:
    step_clock(-step)  # the signal due at 6.0 comes while the clock is behind: re-armed step seconds too far
    try:
        at(8.8)
    finally:
        step_clock(step)  # put right again, whatever happens
# 5.2 s after the clock is right again: a 2 s idle-in-transaction timeout.
at(14.0)
send("BEGIN; SET LOCAL idle_in_transaction_session_timeout = 2000; SELECT 2;")
armed = time.monotonic()
while query(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") != "0":
    if time.monotonic() - armed > 120:
        break
    time.sleep(0.05)
print(f"backward step {step:g} s: a 2 s idle_in_transaction_session_timeout ended the session {time.monotonic() - armed:.2f} s after it was armed")
session.kill()
query("DROP TABLE timeout_after_step")
