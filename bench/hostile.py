"""Ordinary requests with and without hostile clients (`bench/run.sh --only hostile`).

The release binary serves the movies from SQLite (the smallest pool: 4 connections) with its
default limits. An ordinary client makes cached and uncached list requests one after another for
`--seconds`, first alone, then while 50 slowloris connections trickle their headers and 20
clients read 5 MB exports 16 bytes at a time (each reconnecting when the server cuts it off).
Printed: p50 and p99 of each kind in both runs, and the p99 ratio (target: at most 2x).
Standard library only; everything on 127.0.0.1.
"""

import http.client
import socket
import subprocess
import threading
import time

SLOWLORIS = 50
SLOW_READERS = 20


def slowloris(port, stop, cut):
    """Trickles a request head, a header line every half second; counts the server's cut-offs."""
    while not stop.is_set():
        s = socket.socket()
        try:
            s.settimeout(1)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /api/movies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while not stop.is_set():
                time.sleep(0.5)
                s.sendall(b"X-Slow: 1\r\n")
        except OSError:
            cut.append(1)
        finally:
            s.close()


def slow_reader(port, path, stop, cut):
    """Asks for an export with a 4 KB receive buffer and reads 16 bytes every 200 ms."""
    while not stop.is_set():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            while not stop.is_set():
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or not s.recv(16):
                    cut.append(1)
                    break
                time.sleep(0.2)
        except OSError:
            cut.append(1)
        finally:
            s.close()


def ordinary(port, seconds, offset):
    """Latencies (ms) of cached and uncached lists, alternately, for `seconds`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies = {"cached": [], "uncached": []}
    failures = []
    deadline = time.perf_counter() + seconds
    n = offset
    while time.perf_counter() < deadline:
        n += 1
        # Every uncached question is new: a year and a limit never asked before in this run.
        uncached = f"/api/movies?year.gte={1900 + n % 120}&limit={1 + n // 120}"
        for kind, path in (("cached", "/api/movies?genres=drama&limit=100"), ("uncached", uncached)):
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            latencies[kind].append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                failures.append(f"{path}: {response.status}")
    return latencies, failures, n


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_hostile(handler, env_for, out, seconds, sh, free_port, get_status):
    """`sh`, `free_port` and `get_status` are the runner's helpers (bench.py)."""
    print(f"\nHostile clients (movies on SQLite, default limits; an ordinary client for {seconds} s, "
          f"alone, then beside {SLOWLORIS} slowloris connections and {SLOW_READERS} slow export readers)")
    db = out / "hostile.db"
    for suffix in ("", "-wal", "-shm"):
        (out / (db.name + suffix)).unlink(missing_ok=True)
    sh(str(handler), "import", "--dataset", "movies", "--file", str(out.parent.parent / "datasets" / "movies.csv"),
       env=env_for(f"sqlite://{db}"))
    port = free_port()
    server = subprocess.Popen([str(handler), "serve"],
                              env=env_for(f"sqlite://{db}", FUNCTIONS_CUSTOMHANDLER_PORT=str(port)))
    try:
        while get_status(port, "/api/health") != 200:
            time.sleep(0.01)
        get_status(port, "/api/movies?genres=drama&limit=100")  # cached from now on
        quiet, quiet_failures, n = ordinary(port, seconds, 0)

        stop, cut = threading.Event(), []
        attackers = [threading.Thread(target=slowloris, args=(port, stop, cut)) for _ in range(SLOWLORIS)]
        exports = ["/api/movies/export", "/api/movies/export?format=ndjson"]
        attackers += [threading.Thread(target=slow_reader, args=(port, exports[i % 2], stop, cut))
                      for i in range(SLOW_READERS)]
        for attacker in attackers:
            attacker.start()
        time.sleep(2)  # the attack under way
        loud, loud_failures, _ = ordinary(port, seconds, n)
        stop.set()
        for attacker in attackers:
            attacker.join()
    finally:
        server.terminate()
        server.wait()

    print(f"  {'':<22} {'quiet p50':>10} {'quiet p99':>10} {'hostile p50':>12} {'hostile p99':>12}  p99 ratio")
    for kind in ("cached", "uncached"):
        q50, q99, h50, h99 = pct(quiet[kind], 0.5), pct(quiet[kind], 0.99), pct(loud[kind], 0.5), pct(loud[kind], 0.99)
        print(f"  {kind + ' 100-row list':<22} {q50:8.2f}ms {q99:8.2f}ms {h50:10.2f}ms {h99:10.2f}ms  {h99 / q99:5.2f}x "
              f"({len(quiet[kind])} / {len(loud[kind])} requests)")
    print(f"  failures: {len(quiet_failures)} quiet, {len(loud_failures)} under attack "
          f"{loud_failures[:3]}; hostile connections cut by the server: {len(cut)}")
