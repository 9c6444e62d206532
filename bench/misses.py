"""Uncached 100-row pages against Datasette on the same SQLite file (`bench/run.sh --only misses`).

The issue's target: "Uncached 100-row pages with every key distinct (SQLite): at least 6x
Datasette's throughput on the same file in the same run; Datasette (PyPI) run by the benchmark
itself."

Set-up: `handler import` loads the movies into a new SQLite file, `bench/out/misses.db`, with the
handler's schema and indexes; its WAL is checkpointed whenever no server runs, so every server
reads the same bytes. Datasette comes from PyPI, installed by this part into `bench/out/venv`
when that venv has none (`python3 -m venv` + `pip install datasette`), and serves that very file.

Questions (`bench/misses.lua`): every request asks a question no earlier request of the run
asked, so every answer of the handler is a miss (computed from SQLite, then stored in its
in-process cache: the real miss path). Question n is year Y (1980-2014), runtime at least R
(1-60) and under U (200 upwards), the 100 films of highest id, asked as
    handler                /api/movies?year=Y&runtime.gte=R&runtime.lt=U&sort=-id&limit=100
    Datasette, table view  /misses/movies.json?year=Y&runtime__gte=R&runtime__lt=U&_sort_desc=id&_size=100
    Datasette, SQL view    /misses.json?sql=select <the 15 columns> from movies where year = :y and
                           runtime >= :r and runtime < :u order by id desc limit 100&y=Y&r=R&u=U&_shape=array
SQLite answers each the same way (the year index, read backwards in id order, no sort); a few
questions are asked of every server first and must give the same films with the same values.

Datasette configurations, each measured: its defaults (`datasette serve FILE`; the table view's
JSON with the filtered count and suggested facets), the same with `--immutable`, and the leanest
it offers for the same answer: `--setting suggest_facets off --setting allow_facet off`, the table
view with `_shape=array&_nocount=1&_nofacet=1`, or the SQL view with `_shape=array`, each with
and without `--immutable`. The ratio is to the fastest of them.

Load: `wrk -t2 -c16 -d{seconds}s` for every server, one after another: the handler, each Datasette
configuration, the handler again (a new process, so an empty cache; the ratio uses the mean of its
two runs). Printed per run: req/s, p50 and p99, the server's CPU per request (utime + stime of
its process from /proc over the run, divided by the answers), the answers by status (and for the
handler by X-Cache: every one must be a MISS), socket errors; then the ratios.
Standard library only, besides wrk; everything on 127.0.0.1.
"""

import http.client
import json
import os
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.parse
from pathlib import Path

THREADS, CONNECTIONS = 2, 16
SLICE = 1_000_000  # questions per wrk thread (bench/misses.lua); a run at 10,000 req/s asks 50,000 per thread
CHECKS = [2 * SLICE + k for k in (0, 7, 36, 1234, 5000)]  # never asked by wrk: the check questions
LEAN_SETTINGS = ["--setting", "suggest_facets", "off", "--setting", "allow_facet", "off"]
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def question(n):
    """(year, runtime lower bound, runtime upper bound) of question n, as bench/misses.lua makes it."""
    return 1980 + n % 35, 1 + n // 35 % 60, 200 + n // 2100


def columns(root):
    """The movies' columns in the handler's order, from datasets/movies.toml."""
    declaration = tomllib.loads((root / "datasets" / "movies.toml").read_text())
    return [c["name"] for c in declaration["columns"]], \
        {c["name"] for c in declaration["columns"] if c.get("list_delimiter")}


def formats(root, db_name):
    """(label, path format with three %d) of each kind of question: the handler's and Datasette's."""
    names, _ = columns(root)
    sql = (f"select {', '.join(names)} from movies where year = :y and runtime >= :r and runtime < :u "
           "order by id desc limit 100")
    table = f"/{db_name}/movies.json?year=%d&runtime__gte=%d&runtime__lt=%d&_sort_desc=id&_size=100"
    return {
        "handler": "/api/movies?year=%d&runtime.gte=%d&runtime.lt=%d&sort=-id&limit=100",
        "table": table,
        "table lean": table + "&_shape=array&_nocount=1&_nofacet=1",
        "sql": f"/{db_name}.json?sql=" + urllib.parse.quote(sql).replace("%", "%%") + "&y=%d&r=%d&u=%d&_shape=array",
    }


# (label, view, immutable, lean settings)
DATASETTE = [
    ("table view, defaults", "table", False, False),
    ("table view, defaults, --immutable", "table", True, False),
    ("table view, lean", "table lean", False, True),
    ("table view, lean, --immutable", "table lean", True, True),
    ("SQL view, lean", "sql", False, True),
    ("SQL view, lean, --immutable", "sql", True, True),
]


def datasette_binary(out, sh):
    """bench/out/venv's datasette, installed from PyPI if the venv has none."""
    venv = out / "venv"
    binary = venv / "bin" / "datasette"
    if not binary.exists():
        print(f"  installing datasette from PyPI into {venv} ...", flush=True)
        if not (venv / "bin" / "pip").exists():
            sh(sys.executable, "-m", "venv", str(venv))
        sh(str(venv / "bin" / "pip"), "install", "--quiet", "datasette")
    return binary, sh(str(binary), "--version").strip()


def checkpoint(db):
    """Moves the WAL into the file and removes it (no server may be running)."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def get_json(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    if response.status != 200:
        raise SystemExit(f"{path} answered {response.status}: {body[:300]!r}")
    return json.loads(body), response.getheader("x-cache")


def rows_of(answer):
    """The rows of any of the answers as dicts: the handler's items, Datasette's arrays or rows."""
    if isinstance(answer, list):
        return answer
    if "items" in answer:
        return answer["items"]
    return [dict(zip(answer["columns"], row)) for row in answer["rows"]]


def same_rows(handler_rows, other_rows, names, list_columns):
    """The handler's rows and another server's hold the same films in the same order with the same
    values (a list column as the handler's elements, Datasette's as the stored comma-joined text)."""
    if len(handler_rows) != len(other_rows):
        return False
    for ours, theirs in zip(handler_rows, other_rows):
        for name in names:
            value = theirs[name]
            if name in list_columns and isinstance(value, str):
                value = [part.strip() for part in value.split(",")]
            if ours[name] != value:
                return False
    return True


def wrk(port, path_format, seconds, root):
    """The counters of bench/misses.lua: {name: number}."""
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
               "-s", str(root / "bench" / "misses.lua"), f"http://127.0.0.1:{port}", "--", path_format, str(SLICE)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"wrk failed:\n{result.stdout}\n{result.stderr}")
    counts = {}
    for line in result.stdout.splitlines():
        if line.startswith("misses "):
            name, value = line[7:].rsplit(" ", 1)
            counts[name] = int(value)
    return counts


def measure(server, port, path_format, seconds, root):
    """Asks the check questions (which also warm the server up), then runs wrk and reads the
    server's CPU time around it: (check answers, wrk counters with the CPU seconds)."""
    checks = [get_json(port, path_format % question(n)) for n in CHECKS]
    before = cpu_ticks(server.pid)
    counts = wrk(port, path_format, seconds, root)
    counts["cpu_s"] = (cpu_ticks(server.pid) - before) / CLOCK_TICK
    return checks, counts


def wait_until(port, path, get_status, what):
    started = time.perf_counter()
    while get_status(port, path) != 200:
        if time.perf_counter() - started > 60:
            raise SystemExit(f"{what} did not answer {path} in 60 s")
        time.sleep(0.05)


def stop(server):
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_handler(handler, env_for, db, seconds, root, paths, free_port, get_status):
    port = free_port()
    env = env_for(f"sqlite://{db}", FUNCTIONS_CUSTOMHANDLER_PORT=str(port), CACHE_PREFIX=f"bench-misses-{os.getpid()}")
    env.pop("REDIS_URL", None)  # the in-process cache
    server = subprocess.Popen([str(handler), "serve"], env=env)
    try:
        wait_until(port, "/api/health", get_status, "the handler")
        checks, counts = measure(server, port, paths["handler"], seconds, root)
    finally:
        stop(server)
    checkpoint(db)
    if any(outcome != "MISS" for _, outcome in checks):
        raise SystemExit(f"a check question was not a MISS: {[outcome for _, outcome in checks]}")
    return [rows_of(answer) for answer, _ in checks], counts


def run_datasette(binary, db, view, immutable, lean, seconds, root, paths, out, free_port, get_status):
    port = free_port()
    command = [str(binary), "serve", *(["--immutable"] if immutable else []), str(db),
               "-h", "127.0.0.1", "-p", str(port), *(LEAN_SETTINGS if lean else [])]
    with open(out / "misses-datasette.log", "w") as log:  # its access log, one line a request
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(port, "/-/versions.json", get_status, "datasette")
            checks, counts = measure(server, port, paths[view], seconds, root)
        finally:
            stop(server)
    return [rows_of(answer) for answer, _ in checks], counts


def sqlite_alone(db, root, n=2000):
    """The SQL view's statement run by Python's sqlite3 on the file, n questions: (plan, ms each)."""
    names, _ = columns(root)
    sql = (f"select {', '.join(names)} from movies where year = ? and runtime >= ? and runtime < ? "
           "order by id desc limit 100")
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    plan = "; ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, question(0)))
    started = time.perf_counter()
    for i in range(n):
        rows = conn.execute(sql, question(3 * SLICE + i)).fetchall()
        assert len(rows) == 100, (question(3 * SLICE + i), len(rows))
    elapsed = time.perf_counter() - started
    conn.close()
    return plan, elapsed * 1000 / n


def summary(counts):
    """What one run's counters say: req/s, answers by status and X-Cache, CPU per answer, latency."""
    statuses = {k[7:]: v for k, v in counts.items() if k.startswith("status ")}
    answered = sum(statuses.values())
    return {
        "rps": counts["requests"] / (counts["duration_us"] / 1e6),
        "answered": answered,
        "non_2xx": sum(v for status, v in statuses.items() if not status.startswith("2")),
        "statuses": statuses,
        "cache": {k[8:]: v for k, v in counts.items() if k.startswith("x-cache ")},
        "cpu_ms": counts["cpu_s"] * 1000 / max(answered, 1),
        "p50": counts["p50_us"] / 1000,
        "p99": counts["p99_us"] / 1000,
        "socket_errors": counts["socket_errors"],
        "wrapped": counts.get("wrapped", 0),
    }


def bench_misses(handler, env_for, root, out, seconds, sh, free_port, get_status):
    """`sh`, `free_port` and `get_status` are the runner's helpers (bench.py)."""
    print(f"\nUncached 100-row pages against Datasette (movies on SQLite, the same file; wrk -t{THREADS} "
          f"-c{CONNECTIONS} -d{seconds}s per server, every request a question not asked before in the run)")
    binary, version = datasette_binary(out, sh)
    db = out / "misses.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    sh(str(handler), "import", "--dataset", "movies", "--file", str(root / "datasets" / "movies.csv"),
       env=env_for(f"sqlite://{db}"))
    checkpoint(db)
    paths = formats(root, db.stem)
    names, list_columns = columns(root)
    plan, sqlite_ms = sqlite_alone(db, root)
    print(f"  {version}; file {db} ({db.stat().st_size / 1e6:.1f} MB); SQLite's plan: {plan}; "
          f"the statement alone (Python sqlite3, 100 rows fetched): {sqlite_ms:.3f} ms")

    runs = []  # (label, rows of the check questions, counters)
    first = run_handler(handler, env_for, db, seconds, root, paths, free_port, get_status)
    runs.append(("handler, in-process cache", *first))
    for label, view, immutable, lean in DATASETTE:
        runs.append((f"Datasette {label}",
                     *run_datasette(binary, db, view, immutable, lean, seconds, root, paths, out, free_port, get_status)))
    again = run_handler(handler, env_for, db, seconds, root, paths, free_port, get_status)
    runs.append(("handler, in-process cache, again", *again))

    reference = runs[0][1]
    assert all(len(rows) == 100 for rows in reference), [len(rows) for rows in reference]
    different = [label for label, rows, _ in runs if not all(
        same_rows(ours, theirs, names, list_columns) for ours, theirs in zip(reference, rows))]
    print(f"  check: {len(CHECKS)} questions (e.g. year={question(CHECKS[0])[0]}, runtime {question(CHECKS[0])[1]}-"
          f"{question(CHECKS[0])[2] - 1}), 100 rows each: "
          + ("the same films in the same order with the same values from every server and view"
             if not different else f"DIFFERENT answers from {', '.join(different)}"))

    print(f"  {'server, configuration':<46} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10}  answers")
    results = {}
    for label, _, counts in runs:
        s = summary(counts)
        results[label] = s
        answers = ", ".join(f"{status}: {n:,}" for status, n in sorted(s["statuses"].items()))
        if s["cache"].get("none") != s["answered"]:
            answers += "; X-Cache " + ", ".join(f"{k}: {n:,}" for k, n in sorted(s["cache"].items()))
        answers += f"; socket errors {s['socket_errors']}" + (f"; {s['wrapped']} repeated" if s["wrapped"] else "")
        print(f"  {label:<46} {s['rps']:>8,.0f} {s['p50']:>7.2f} {s['p99']:>7.2f} {s['cpu_ms']:>10.2f}  {answers}")

    handlers = [results["handler, in-process cache"], results["handler, in-process cache, again"]]
    handler_rps = sum(s["rps"] for s in handlers) / 2
    handler_cpu = sum(s["cpu_ms"] for s in handlers) / 2
    datasettes = {label: s for label, s in results.items() if label.startswith("Datasette")}
    best = max(datasettes, key=lambda label: datasettes[label]["rps"])
    best_table = max((label for label in datasettes if "table view" in label), key=lambda label: datasettes[label]["rps"])
    valid = (not different and all(s["non_2xx"] == 0 and s["socket_errors"] == 0
                                   and s["cache"].get("MISS") == s["answered"] for s in handlers))
    print(f"  handler: {handler_rps:,.0f} req/s (mean of its two runs), {handler_cpu:.2f} ms CPU per request; "
          f"every answer a MISS and a 200: {'yes' if valid else 'NO (the ratio below means nothing)'}")
    for what, label in (("the fastest Datasette", best), ("the fastest Datasette table view", best_table)):
        s = datasettes[label]
        print(f"  ratio to {what} ({label.removeprefix('Datasette ')}, {s['rps']:,.0f} req/s): "
              f"{handler_rps / s['rps']:.2f}x throughput, {s['cpu_ms'] / handler_cpu:.2f}x less CPU per request"
              + ("  (target: at least 6x)" if label == best else ""))
    return {"ratio": handler_rps / datasettes[best]["rps"], "valid": valid, "peer": best.removeprefix("Datasette ")}
