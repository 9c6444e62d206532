#!/usr/bin/env python3
"""Import, export and start-up benchmarks for the handler, each against a baseline measured in the
same run on the same machine (see bench/README.md). Standard library only.

    bench/run.sh            # builds the release binary first
    bench/run.sh --runs 3   # best of 3 instead of best of 2
    bench/run.sh --only zipf --seconds 20   # one part: the hit ratio of a Zipf mix, 0% and 1% writes
    bench/run.sh --only large               # cached answers up to the 5 MB export against the same bytes
    bench/run.sh --only crud                # the CRUD-profile mix against the static route (wrk)
    bench/run.sh --only misses              # uncached 100-row pages against Datasette on the same SQLite file
"""

import argparse
import gzip
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
# Cargo's own CARGO_TARGET_DIR (a worktree's build kept apart) is honoured; --handler names a binary.
HANDLER = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve() / "release" / "handler"
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
PG_BENCH_DB = "smartcache_bench"
ROWS = 336_776

PG_NATIVE_TABLE = """CREATE TABLE flights (year int, month int, day int, dep_time int, sched_dep_time int,
  dep_delay int, arr_time int, sched_arr_time int, arr_delay int, carrier text, flight int, tailnum text,
  origin text, dest text, air_time int, distance int, hour int, minute int, time_hour timestamptz)"""


def sh(*args, env=None, capture=True, stdin=None, input=None):
    result = subprocess.run(args, env=env, capture_output=capture, text=True, stdin=stdin, input=input)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def timed(fn, runs):
    """Best wall time of `runs` calls of fn(); fn may prepare state before its timed part by
    returning a (prepare, measure) pair instead."""
    best = None
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    return best


def psql(db, *commands, stdout=None):
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url]
    for command in commands:
        args += ["-c", command]
    subprocess.run(args, check=True, stdout=stdout or subprocess.DEVNULL)


def handler_env(database_url, **extra):
    env = dict(os.environ, DATASETS_DIR=str(ROOT / "datasets"), DATABASE_URL=database_url, RUST_LOG="warn")
    env.update(extra)
    return env


def flights_csv():
    local = ROOT / "datasets" / "flights.csv"
    if local.exists():
        return local
    shared = ROOT.parent / "shared" / "datasets" / "flights.csv.gz"
    target = OUT / "flights.csv"
    if not target.exists():
        if shared.exists():
            with gzip.open(shared, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            sh(str(ROOT / "datasets" / "fetch-flights.sh"), capture=False)
            return local
    return target


def import_with_handler(database_url, csv):
    sh(str(HANDLER), "import", "--dataset", "flights", "--file", str(csv), env=handler_env(database_url))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_status(port, path):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None


def rss_kib(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def row(name, seconds, rows=ROWS, baseline=None):
    rate = rows / seconds
    ratio = f"{(baseline / seconds):5.2f}x" if baseline else "  base"
    print(f"  {name:<58} {seconds:7.2f} s {rate:>11,.0f} rows/s  {ratio}")


def bench_postgres_import(csv, runs):
    print("\nPostgreSQL import (336,776 flights; ratio = baseline time / this time, higher is faster)")
    handler_db = PG_ADMIN.rsplit("/", 1)[0] + "/" + PG_BENCH_DB
    psql("test", "SET client_min_messages = warning", f"DROP DATABASE IF EXISTS {PG_BENCH_DB}", f"CREATE DATABASE {PG_BENCH_DB}")

    def native():
        psql(PG_BENCH_DB, "SET client_min_messages = warning", "DROP SCHEMA IF EXISTS native CASCADE", "CREATE SCHEMA native")
        psql(PG_BENCH_DB, "SET search_path = native; " + PG_NATIVE_TABLE + ";",
             f"\\copy native.flights FROM '{csv}' WITH (FORMAT csv, HEADER, NULL 'NA')")

    native_s = timed(native, runs)
    ours_s = timed(lambda: import_with_handler(handler_db, csv), runs)
    staged = last_staged_seconds(handler_db, csv)

    # The same indexes as the handler's, replayed on the natively loaded table.
    out = subprocess.run(["psql", "-X", "-At", handler_db, "-c",
                          "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'flights'"],
                         check=True, capture_output=True, text=True).stdout.split("\n")
    index_defs = [d.replace(" public.flights ", " native.flights ").replace("__key", "")
                  .replace("CREATE UNIQUE INDEX flights_pkey", "CREATE UNIQUE INDEX flights_pkey_native")
                  .replace(" ON ", " ON ", 1) for d in out if d]
    index_defs = [d.replace("CREATE INDEX ", "CREATE INDEX native_", 1) if d.startswith("CREATE INDEX ") else d for d in index_defs]

    def native_indexed():
        native()
        psql(PG_BENCH_DB, "ALTER TABLE native.flights ADD COLUMN id bigserial PRIMARY KEY",
             *[d for d in index_defs if "UNIQUE" not in d], "ANALYZE native.flights")

    native_indexed_s = timed(native_indexed, runs)
    row("psql \\copy into a plain table (baseline)", native_s)
    row(f"handler import, staging phase ({staged:.2f} s of the total)", staged, baseline=native_s)
    row("handler import, total (typed, deduplicated, indexed, swapped)", ours_s, baseline=native_s)
    row(f"psql \\copy + the same {len(index_defs) - 1} indexes + primary key (baseline 2)", native_indexed_s)
    row("handler import, total, against baseline 2", ours_s, baseline=native_indexed_s)
    return handler_db


def last_staged_seconds(database_url, csv):
    out = sh(str(HANDLER), "import", "--dataset", "flights", "--file", str(csv), env=handler_env(database_url))
    summary = out.strip().splitlines()[-1]
    return float(summary.split("staged in ")[1].split(" s")[0])


def bench_sqlite_import(csv, runs):
    print("\nSQLite import (336,776 flights)")
    ours_db = OUT / "handler.db"
    native_db = OUT / "native.db"

    def fresh(path):
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    def native():
        fresh(native_db)
        sh("sqlite3", str(native_db), f".import --csv {csv} flights")

    def ours():
        fresh(ours_db)
        import_with_handler(f"sqlite://{ours_db}", csv)

    native_s = timed(native, runs)
    ours_s = timed(ours, runs)
    fresh(ours_db)
    staged = last_staged_seconds(f"sqlite://{ours_db}", csv)
    index_sql = sh("sqlite3", str(ours_db), "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'flights' AND sql IS NOT NULL")
    index_defs = [d.replace("__key", "") + ";" for d in index_sql.strip().splitlines()]

    def native_indexed():
        native()
        sh("sqlite3", str(native_db), " ".join(index_defs) + " ANALYZE flights;")

    native_indexed_s = timed(native_indexed, runs)
    row("sqlite3 .import into a new table (baseline)", native_s)
    row(f"handler import, staging phase ({staged:.2f} s of the total)", staged, baseline=native_s)
    row("handler import, total (typed, deduplicated, indexed, swapped)", ours_s, baseline=native_s)
    row(f"sqlite3 .import + the same {len(index_defs)} indexes (baseline 2)", native_indexed_s)
    row("handler import, total, against baseline 2", ours_s, baseline=native_indexed_s)


MYSQL_BENCH_DB = "smartcache_bench"
MYSQL_NATIVE_TABLE = """CREATE TABLE flights (year int, month int, day int, dep_time int, sched_dep_time int,
  dep_delay int, arr_time int, sched_arr_time int, arr_delay int, carrier varchar(8), flight int,
  tailnum varchar(8), origin varchar(8), dest varchar(8), air_time int, distance int, hour int, minute int,
  time_hour datetime(6)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"""
FLIGHT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
                  "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
                  "air_time", "distance", "hour", "minute", "time_hour"]


def mariadb(*statements, database=MYSQL_BENCH_DB, output=False):
    args = ["mariadb", "--local-infile=1", "-uroot", "-h127.0.0.1", "-N", "-B", database, "-e", "; ".join(statements)]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout if output else \
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def bench_mariadb_import(csv, runs):
    print("\nMariaDB import (336,776 flights)")
    mariadb(f"DROP DATABASE IF EXISTS {MYSQL_BENCH_DB}", f"CREATE DATABASE {MYSQL_BENCH_DB}", database="test")
    handler_db = f"mysql://root@127.0.0.1:3306/{MYSQL_BENCH_DB}"
    # LOAD DATA with 'NA' turned into NULL and the ISO timestamps into DATETIME, as the handler does.
    variables = ", ".join(f"@{c}" for c in FLIGHT_COLUMNS)
    assignments = ", ".join(
        f"{c} = NULLIF(@{c}, 'NA')" if c != "time_hour" else
        "time_hour = STR_TO_DATE(NULLIF(@time_hour, 'NA'), '%Y-%m-%dT%H:%i:%sZ')" for c in FLIGHT_COLUMNS)
    load = (f"LOAD DATA LOCAL INFILE '{csv}' INTO TABLE native_flights FIELDS TERMINATED BY ',' "
            f"OPTIONALLY ENCLOSED BY '\"' IGNORE 1 LINES ({variables}) SET {assignments}")

    def native():
        mariadb("DROP TABLE IF EXISTS native_flights", MYSQL_NATIVE_TABLE.replace("TABLE flights", "TABLE native_flights"), load)

    native_s = timed(native, runs)
    ours_s = timed(lambda: import_with_handler(handler_db, csv), runs)
    staged = last_staged_seconds(handler_db, csv)
    # The same indexes as the handler's (on the plain columns), added after the load in one pass.
    index_rows = mariadb("SELECT index_name, GROUP_CONCAT(column_name ORDER BY seq_in_index) FROM information_schema.statistics "
                         f"WHERE table_schema = '{MYSQL_BENCH_DB}' AND table_name = 'flights' AND index_name <> 'PRIMARY' "
                         "GROUP BY index_name", output=True).strip().splitlines()
    additions = ["ADD COLUMN id BIGINT AUTO_INCREMENT PRIMARY KEY FIRST"]
    for line in index_rows:
        name, columns = line.split("\t")
        columns = ", ".join(c.replace("__key", "") for c in columns.split(","))
        additions.append(f"ADD INDEX {name} ({columns})")

    def native_indexed():
        native()
        mariadb("ALTER TABLE native_flights " + ", ".join(additions))

    native_indexed_s = timed(native_indexed, runs)
    row("mariadb LOAD DATA LOCAL INFILE into a plain table (baseline)", native_s)
    row(f"handler import, staging phase ({staged:.2f} s of the total)", staged, baseline=native_s)
    row("handler import, total (typed, deduplicated, indexed, swapped)", ours_s, baseline=native_s)
    row(f"LOAD DATA + the same {len(additions) - 1} indexes + primary key (baseline 2)", native_indexed_s)
    row("handler import, total, against baseline 2", ours_s, baseline=native_indexed_s)


def bench_export(handler_db, runs):
    print("\nFull export of flights as JSON from PostgreSQL, uncached")
    port = free_port()
    server = subprocess.Popen([str(HANDLER), "serve"], env=handler_env(handler_db, FUNCTIONS_CUSTOMHANDLER_PORT=str(port)))
    try:
        while get_status(port, "/api/health") != 200:
            time.sleep(0.01)
        idle_rss = rss_kib(server.pid)
        peak = [idle_rss]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(server.pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        sizes = []

        counter = iter(range(4))

        def export():
            # A new cache key each run (month.gte=0, 1, ... all match every row): every run is
            # a miss, computed from the database.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            run = next(counter)
            conn.request("GET", f"/api/flights/export?format=json&month.gte={run // 2 % 2}&day.gte={run % 2}")
            response = conn.getresponse()
            assert response.status == 200, response.status
            total, rows, tail = 0, 0, b""
            while chunk := response.read(1 << 16):
                total += len(chunk)
                rows += (tail + chunk).count(b'{"id":') - tail.count(b'{"id":')
                tail = chunk[-8:]
            sizes.append((total, rows))

        ours_s = timed(export, runs)
        done.set()
        sampler.join()
        total, rows = sizes[-1]
        assert rows == ROWS, f"the export had {rows} rows"

        def native():
            with open(os.devnull, "w") as devnull:
                psql(PG_BENCH_DB, "\\copy (SELECT row_to_json(f) FROM flights f ORDER BY id) TO STDOUT", stdout=devnull)

        native_s = timed(native, runs)
        row("psql \\copy (select row_to_json(...)) to stdout (baseline)", native_s)
        row(f"handler GET /api/flights/export ({total / 1e6:.0f} MB)", ours_s, baseline=native_s)
        print(f"  handler memory: {idle_rss / 1024:.1f} MiB idle, peak {peak[0] / 1024:.1f} MiB during the exports "
              f"(VmHWM {rss_kib(server.pid, 'VmHWM') / 1024:.1f} MiB); the body is {total / 1e6:.0f} MB")
    finally:
        server.terminate()
        server.wait()


def ttfb_and_total(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    first = response.read(1)
    ttfb = time.perf_counter() - started
    total_bytes = len(first)
    while chunk := response.read(1 << 16):
        total_bytes += len(chunk)
    return ttfb, time.perf_counter() - started, response.getheader("x-cache"), total_bytes


def bench_cached_export(handler_db, runs):
    print("\nCached full export of flights (JSON, gzip stored once in Redis)")
    port = free_port()
    prefix = f"bench-export-{os.getpid()}"
    server = subprocess.Popen([str(HANDLER), "serve"], env=handler_env(
        handler_db, FUNCTIONS_CUSTOMHANDLER_PORT=str(port), REDIS_URL="redis://127.0.0.1:6379", CACHE_PREFIX=prefix))
    path = "/api/flights/export?format=json"
    key = f"{prefix}:flights:export:format=json"
    try:
        while get_status(port, "/api/health") != 200:
            time.sleep(0.01)
        _, miss_total, outcome, size = ttfb_and_total(port, path)
        assert outcome == "MISS", outcome
        for _ in range(100):
            if sh("redis-cli", "exists", key).strip() == "1":
                break
            time.sleep(0.1)
        stored = int(sh("redis-cli", "strlen", key).strip())
        best = {}
        for label, headers in (("gzip", {"Accept-Encoding": "gzip"}), ("plain", {})):
            results = [ttfb_and_total(port, path, headers) for _ in range(runs)]
            assert all(r[2] == "HIT" for r in results), [r[2] for r in results]
            best[label] = (min(r[0] for r in results), min(r[1] for r in results))

        def redis_get():
            with open(os.devnull, "wb") as devnull:
                subprocess.run(["redis-cli", "--raw", "GET", key], check=True, stdout=devnull)

        baseline = timed(redis_get, runs)
        print(f"  the export is {size / 1e6:.0f} MB; stored gzipped as {stored / 1e6:.1f} MB; the miss (streamed from PostgreSQL and stored) took {miss_total:.2f} s")
        print(f"  {'redis-cli --raw GET of the stored value (baseline)':<58} total {baseline * 1000:8.1f} ms")
        for label, (ttfb, total) in best.items():
            what = "stored bytes as they are" if label == "gzip" else "decompressed as sent"
            print(f"  {'cached export, ' + label + ' (' + what + ')':<58} total {total * 1000:8.1f} ms  first byte {ttfb * 1000:6.1f} ms  {baseline / total:5.2f}x")
    finally:
        server.terminate()
        server.wait()
        sh("redis-cli", "del", key)


def bench_startup(samples):
    print(f"\nStart-up: `handler serve` to the first 200 from /api/health ({samples} runs, SQLite)")
    times = []
    for _ in range(samples):
        port = free_port()
        db = OUT / "startup.db"
        started = time.perf_counter()
        server = subprocess.Popen([str(HANDLER), "serve"], env=handler_env(f"sqlite://{db}", FUNCTIONS_CUSTOMHANDLER_PORT=str(port)))
        try:
            while get_status(port, "/api/health") != 200:
                if time.perf_counter() - started > 10:
                    sys.exit("the server did not become healthy in 10 s")
                time.sleep(0.0005)
            times.append((time.perf_counter() - started) * 1000)
        finally:
            server.terminate()
            server.wait()
    print(f"  median {statistics.median(times):.1f} ms, max {max(times):.1f} ms (target: under 100 ms)")


def wrk(url, seconds, connections=64):
    """(requests/s, p50 ms, p99 ms) from wrk's --latency report."""
    report = wrk_report(url, seconds, connections)
    return report["rps"], report["p50"], report["p99"]


def wrk_report(url, seconds, connections=64, headers=(), timeout=None):
    """wrk -t2 with --latency and these request headers ("Name: value"): requests/s, p50 and p99
    (ms), bytes/s read, and the errors it counted (socket errors and answers other than 2xx/3xx).
    `timeout` (seconds; wrk's default is 2) is how long a request may take before it counts as an error."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if timeout:
        args.append(f"--timeout={timeout}s")
    for header in headers:
        args += ["-H", header]
    out = sh(*args, url)
    lines = out.splitlines()

    def value(prefix):
        return next((l.split(":", 1)[1].strip() for l in lines if l.strip().startswith(prefix)), None)

    def ms(text):
        for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)):
            if text.endswith(unit):
                return float(text[: -len(unit)]) * factor
        return float(text)

    def percentile(name):
        return ms(next(l for l in lines if l.strip().startswith(name)).split()[1])

    transfer = value("Transfer/sec")
    factor = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
    unit = transfer.lstrip("0123456789.")
    errors = {}
    socket = value("Socket errors")
    if socket:
        errors.update({k: int(v) for k, v in (part.split() for part in socket.split(","))})
    if value("Non-2xx or 3xx responses"):
        errors["non-2xx"] = int(value("Non-2xx or 3xx responses"))
    return {"rps": float(value("Requests/sec")), "p50": percentile("50%"), "p99": percentile("99%"),
            "bytes_per_s": float(transfer[: -len(unit)]) * factor[unit],
            "errors": {k: v for k, v in errors.items() if v}}


def timed_gets(port, paths):
    """Latency (ms) of each GET, one after another, with the X-Cache each got."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for path in paths:
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        out.append(((time.perf_counter() - started) * 1000, response.getheader("x-cache")))
    return out


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_cache(seconds):
    print(f"\nCache (movies on SQLite; wrk, 2 threads, 64 connections, {seconds} s each)")
    if not shutil.which("wrk"):
        print("  skipped: wrk is not installed (apt-get install wrk)")
        return
    db = OUT / "cache.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    sh(str(HANDLER), "import", "--dataset", "movies", "--file", str(ROOT / "datasets" / "movies.csv"),
       env=handler_env(f"sqlite://{db}"))
    path = "/api/movies?genres=drama&limit=100"
    results = {}
    for label, extra in (("in-process", {}), ("redis", {"REDIS_URL": "redis://127.0.0.1:6379"})):
        port = free_port()
        env = handler_env(f"sqlite://{db}", FUNCTIONS_CUSTOMHANDLER_PORT=str(port),
                          CACHE_PREFIX=f"bench-{os.getpid()}-{label}", JWT_SECRET=BENCH_JWT_SECRET, **extra)
        server = subprocess.Popen([str(HANDLER), "serve"], env=env)
        try:
            while get_status(port, "/api/health") != 200:
                time.sleep(0.01)
            first = timed_gets(port, [path])[0]
            assert first[1] == "MISS", first
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", path)
            body = conn.getresponse().read()
            (OUT / "list.json").write_bytes(body)
            results[label] = wrk(f"http://127.0.0.1:{port}{path}", seconds)
            hits = [ms for ms, outcome in timed_gets(port, [path] * 500) if outcome == "HIT"]
            misses = [ms for ms, outcome in timed_gets(port, [f"/api/movies?year={y}&limit=100" for y in range(1900, 2016)])
                      if outcome == "MISS"]
            conn.request("GET", "/api/admin/cache", headers={"Authorization": f"Bearer {admin_token(port, db)}"})
            view = json.loads(conn.getresponse().read())
            near = view["near"]
            per_entry = near["bytes"] / max(near["entries"], 1)
            stored = ""
            if label == "redis":
                key = f"bench-{os.getpid()}-redis:movies:list:genres=drama&limit=100"
                usage = sh("redis-cli", "memory", "usage", key).strip()
                stored = f", {usage} bytes in Redis (MEMORY USAGE)"
                sh("redis-cli", "del", key)
            print(f"  {label}: hit p50 {pct(hits, 0.5):.2f} ms, p99 {pct(hits, 0.99):.2f} ms ({len(hits)} hits); "
                  f"miss p50 {pct(misses, 0.5):.2f} ms, p99 {pct(misses, 0.99):.2f} ms ({len(misses)} misses)")
            print(f"  {label}: a 100-row list is {len(body):,} bytes; the near cache holds {per_entry:,.0f} bytes "
                  f"per entry (gzipped once + plain){stored}")
        finally:
            server.terminate()
            server.wait()
    bench_stale(db)
    port = free_port()
    static = subprocess.Popen([str(HANDLER), "bench-static", "--file", str(OUT / "list.json"), "--port", str(port)])
    try:
        while get_status(port, "/") != 200:
            time.sleep(0.01)
        baseline = wrk(f"http://127.0.0.1:{port}/", seconds)
    finally:
        static.terminate()
        static.wait()
    base_rps, base_p50, base_p99 = baseline
    print(f"  {'same bytes from memory, no cache logic (baseline)':<52} {base_rps:>10,.0f} req/s  p50 {base_p50:6.2f} ms  p99 {base_p99:6.2f} ms")
    for label, (rps, p50, p99) in results.items():
        print(f"  {'cached 100-row list, ' + label + ' cache':<52} {rps:>10,.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
              f"{rps / base_rps:5.2f}x throughput")


BENCH_JWT_SECRET = "bench secret, bench secret, bench secret!"


def admin_token(port, db):
    """An admin made the supported way (`handler users create --admin`), signed in over HTTP."""
    email = f"bench-{os.getpid()}-{port}@example.com"
    password = "bench password"
    sh(str(HANDLER), "users", "create", "--email", email, "--password-stdin", "--admin",
       env=handler_env(f"sqlite://{db}"), input=password + "\n")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"email": email, "password": password})
    conn.request("POST", "/api/auth/login", body=body, headers={"Content-Type": "application/json"})
    return json.loads(conn.getresponse().read())["access_token"]


def bench_stale(db):
    """STALE latency: one instance fills Redis with 1-second answers and stops; once they are
    past freshness, a second instance whose database refuses connections serves them."""
    prefix = f"bench-{os.getpid()}-stale"
    paths = [f"/api/movies?year={y}&limit=100" for y in range(1900, 2016)]
    # The shipped movies declaration keeps answers fresh for 30 minutes: use a 1-second copy.
    datasets = OUT / "stale-datasets"
    datasets.mkdir(exist_ok=True)
    declaration = (ROOT / "datasets" / "movies.toml").read_text()
    (datasets / "movies.toml").write_text(declaration.replace("cache_ttl_seconds = 1800", "cache_ttl_seconds = 1"))

    def serve(database_url):
        port = free_port()
        env = handler_env(database_url, FUNCTIONS_CUSTOMHANDLER_PORT=str(port), CACHE_PREFIX=prefix,
                          DATASETS_DIR=str(datasets), REDIS_URL="redis://127.0.0.1:6379")
        server = subprocess.Popen([str(HANDLER), "serve"], env=env)
        while get_status(port, "/api/version") != 200:
            time.sleep(0.01)
        return server, port

    filler, port = serve(f"sqlite://{db}")
    try:
        timed_gets(port, paths)
    finally:
        filler.terminate()
        filler.wait()
    time.sleep(1.5)  # past freshness, well inside the stale grace
    broken, port = serve("postgres://nobody@127.0.0.1:9/none")  # nothing listens on port 9
    try:
        answers = timed_gets(port, paths)
        stale = [ms for ms, outcome in answers if outcome == "STALE"]
    finally:
        broken.terminate()
        broken.wait()
    keys = sh("redis-cli", "--scan", "--pattern", f"{prefix}:*").split()
    if keys:
        sh("redis-cli", "del", *keys)
    if len(stale) != len(paths):
        outcomes = sorted({str(outcome) for _, outcome in answers})
        print(f"  redis: only {len(stale)} of {len(paths)} answers were STALE (others: {', '.join(outcomes)})")
    if stale:
        print(f"  redis: stale p50 {pct(stale, 0.5):.2f} ms, p99 {pct(stale, 0.99):.2f} ms ({len(stale)} stale, "
              "database refusing connections)")


def print_targets(scores):
    """Issue 14's targets ("what it must show"), each with what this run measured: met or missed."""
    zip_path = sh(sys.executable, str(ROOT / "package" / "build.py"), "--binary", str(HANDLER),
                  "--out", str(OUT / "targets" / "smartcache-functions.zip"))
    zip_mb = (OUT / "targets" / "smartcache-functions.zip").stat().st_size / 1e6
    rows = []
    rows += scores.get("large", [])
    for where, figures in scores.get("crud", []):
        for label, f in figures.items():
            if label.startswith("mix,"):
                rows.append((f"CRUD mix on {where.split(',')[0]}, {label.split(', ', 1)[1]}: {f['ratio']:.3f}x static, "
                             f"{f['errors']} errors, GET hits {f['hits']:.1%}, p99 {f['p99_ms']:.1f} ms", ">= 0.6x, 0 errors",
                             f["ratio"] >= 0.6 and f["errors"] == 0))
    if "misses" in scores:
        m = scores["misses"]
        rows.append((f"uncached pages: {m['ratio']:.2f}x the fastest Datasette ({m['peer']})"
                     + ("" if m["valid"] else ", NOT every answer a MISS"), ">= 6x", m["ratio"] >= 6 and m["valid"]))
    rows.append((f"Functions zip: {zip_mb:.1f} MB", "<= 15 MB", zip_mb <= 15))
    print("\nIssue 14's targets, from this run (Range requests: tests/ranges.rs and tests/encodings.rs, by cargo test)")
    for what, target, ok in rows:
        print(f"  {'met   ' if ok else 'MISSED'}  {what}  (target: {target})")
    print(f"  {sum(ok for *_, ok in rows)} of {len(rows)} met; {zip_path.strip().splitlines()[-1] if zip_path.strip() else ''}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="best of this many runs per measurement")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--handler", type=Path, help="benchmark this binary (implies --no-build)")
    parser.add_argument("--only", choices=["import", "mariadb", "export", "cache", "large", "hostile", "zipf", "crud", "misses",
                                           "sync", "targets"],
                        help="run one part (export reuses the flights that the import part loaded); targets: issue 14's "
                             "parts (large, crud, misses) and the Functions zip, then every target of the issue, met or not")
    parser.add_argument("--seconds", type=int, help="length of each load run (default 10; large 5; zipf 20)")
    parser.add_argument("--clients", type=int, default=8, help="zipf: concurrent clients over the two instances")
    parser.add_argument("--write-percent", type=float, default=1, help="zipf: writes in the second run")
    parser.add_argument("--synchronous-commit", choices=["off", "on"], default="off",
                        help="crud: PostgreSQL's setting for the bench database (off: as the profile's tmpfs Postgres)")
    parser.add_argument("--crud-database", choices=["postgres", "sqlite", "both"], default="both",
                        help="crud: the database the mix runs on")
    args = parser.parse_args()
    if args.write_percent <= 0:
        parser.error("--write-percent must be above 0 (the first run has none)")
    OUT.mkdir(parents=True, exist_ok=True)
    global HANDLER
    if args.handler:
        HANDLER = args.handler.resolve()
    elif not args.no_build:
        sh("cargo", "build", "--release", "--quiet", "-p", "handler", capture=False)
    for tool in ("psql", "sqlite3", "mariadb") if args.only not in ("cache", "large", "hostile", "zipf", "crud", "misses",
                                                                     "sync", "targets") else \
            ("psql", "redis-cli") if args.only in ("zipf", "large", "crud", "sync", "targets") else ():
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install postgresql-client sqlite3 mariadb-client redis-tools")
    print(f"machine: {os.cpu_count()} cores; best of {args.runs}")
    parts = {"large", "crud", "misses"} if args.only == "targets" else {args.only}
    scores = {}
    if args.only in (None, "import"):
        csv = flights_csv()
        print(f"file: {csv} ({csv.stat().st_size / 1e6:.0f} MB)")
        handler_db = bench_postgres_import(csv, args.runs)
        bench_sqlite_import(csv, args.runs)
        bench_mariadb_import(csv, args.runs)
        bench_export(handler_db, args.runs)
        bench_cached_export(handler_db, args.runs)
        bench_startup(10)
    if args.only == "mariadb":
        bench_mariadb_import(flights_csv(), args.runs)
    if args.only == "export":
        handler_db = PG_ADMIN.rsplit("/", 1)[0] + "/" + PG_BENCH_DB
        bench_export(handler_db, args.runs)
        bench_cached_export(handler_db, args.runs)
    if args.only in (None, "cache"):
        bench_cache(args.seconds or 10)
    if parts & {None, "large"}:
        if shutil.which("wrk"):
            import large

            scores["large"] = large.bench_large(HANDLER, handler_env, OUT, PG_ADMIN.rsplit("/", 1)[0] + "/" + large.DATABASE, psql,
                              args.seconds or 5, args.runs, sh, free_port, get_status, wrk_report)
        else:
            print("\nLarge cached answers: skipped, wrk is not installed (apt-get install wrk)")
    if args.only in (None, "hostile"):
        import hostile

        hostile.bench_hostile(HANDLER, handler_env, OUT, max(args.seconds or 10, 10), sh, free_port, get_status)
    if args.only in (None, "zipf"):
        import zipf

        zipf.bench_zipf(HANDLER, handler_env, ROOT, PG_ADMIN.rsplit("/", 1)[0] + "/" + zipf.DATABASE, psql,
                        args.seconds or 20, args.clients, args.write_percent, sh, free_port, get_status)
    if parts & {None, "crud"}:
        import crud

        if shutil.which("wrk"):
            databases = {"postgres": PG_ADMIN.rsplit("/", 1)[0] + "/" + crud.DATABASE, "sqlite": "sqlite"}
            for name, url in databases.items():
                if args.crud_database in (name, "both"):
                    scores.setdefault("crud", []).append(
                        crud.bench_crud(HANDLER, handler_env, ROOT, OUT, url, psql, args.seconds or 10,
                                        args.synchronous_commit, sh, free_port, get_status))
        else:
            print("\nCRUD-profile mix skipped: wrk is not installed (apt-get install wrk)")
    if parts & {None, "misses"}:
        import misses

        if shutil.which("wrk"):
            scores["misses"] = misses.bench_misses(HANDLER, handler_env, ROOT, OUT, args.seconds or 10, sh, free_port, get_status)
        else:
            print("\nUncached pages against Datasette skipped: wrk is not installed (apt-get install wrk)")
    if args.only == "targets":
        print_targets(scores)
    if args.only in (None, "sync"):
        import sync

        sync.bench_sync(HANDLER, handler_env, OUT, PG_ADMIN.rsplit("/", 1)[0] + "/" + sync.DATABASE, psql, flights_csv(),
                        sh, free_port, get_status, args.runs)


if __name__ == "__main__":
    main()
