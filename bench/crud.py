"""The CRUD-profile mix (`bench/run.sh --only crud`), after HttpArena's CRUD profile: 75% cached
GETs by id, 15% updates, 5% lists, 5% upserts, writes invalidating what they change; its
throughput as a ratio to the same binary's static route (`handler bench-static`) in the same run.

One `handler serve` (release) on PostgreSQL (`smartcache_bench_crud`, recreated, with
`synchronous_commit` off unless `--synchronous-commit on`: the profile's Postgres is on tmpfs;
the movies and 500 reserved rows imported afresh before each cache), then again on a new SQLite
file (`bench/out/crud.db`; `--crud-database` picks one), with the in-process cache,
then one with Redis (a cache prefix of the run's own, deleted afterwards). wrk drives the mix
(`bench/crud.lua`, which counts answers by status and X-Cache) with the same threads, connections
and duration as the static baseline (plain wrk, measured before the first run and after the
last). Each cache also runs the same GETs and lists without the writes, to show what the writes
cost. Before each run every hot id and every list is asked once, so it measures a warm cache.

Printed per run: req/s and its ratio to the static route, p50 and p99 of every request, errors
(non-2xx answers and socket errors), the hit ratio of the GETs (items and lists apart), writes a
second; then what was sent and answered.
Standard library only, besides wrk; everything on 127.0.0.1.
"""

import csv
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

DATABASE = "smartcache_bench_crud"
REDIS_URL = "redis://127.0.0.1:6379"
JWT_SECRET = "bench secret, bench secret, bench secret!"
SEED = 20261214
HOT_IDS = 1_000
RESERVED_FIRST, RESERVED_COUNT = 900_000_001, 500  # imported before each row; PUT replaces them
NEW_FIRST = {"in-process": 910_000_000, "redis": 930_000_000}  # POST creates these (+10M per run, +1M per wrk thread)
THREADS, CONNECTIONS = 2, 64  # as the cache part's wrk
LISTS = 5  # bench/crud.lua's LISTS


def reserved_csv(root, out):
    """movies.csv with RESERVED_COUNT more rows at the reserved ids (the rows PUT replaces)."""
    target = out / "crud-movies.csv"
    with open(root / "datasets" / "movies.csv", newline="") as src, open(target, "w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        writer.writerows(reader)
        for i in range(RESERVED_COUNT):
            n = RESERVED_FIRST + i
            writer.writerow([n, f"tt8{i:07d}", f"Reserved film {i}", 2000 + i % 16, "PG-13", 100, "Drama, Comedy",
                             "Bench Director", "English", "United States", 50 + i % 50, 0, 60, 100, "1000000.0"])
    return target


def hot_ids(root, out):
    """HOT_IDS film ids drawn with a fixed seed, written one a line for the Lua script."""
    with open(root / "datasets" / "movies.csv", newline="") as f:
        ids = sorted(int(line["ID"]) for line in csv.DictReader(f))
    chosen = random.Random(SEED).sample(ids, HOT_IDS)
    target = out / "crud-hot-ids.txt"
    target.write_text("".join(f"{i}\n" for i in chosen))
    return target, chosen


def lua_lists(root):
    text = (root / "bench" / "crud.lua").read_text()
    block = text.split("local LISTS = {", 1)[1].split("}", 1)[0]
    return re.findall(r'"([^"]+)"', block)


def wrk_run(url, seconds, script=None, args=()):
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if script:
        command += ["-s", str(script)]
    command.append(url)
    if args:
        command += ["--", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"wrk failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def plain_wrk(url, seconds):
    """(req/s, p50 ms, p99 ms) of wrk's own report."""
    out = wrk_run(url, seconds)
    rps = float(next(l for l in out.splitlines() if l.startswith("Requests/sec:")).split()[1])

    def percentile(name):
        value = next(l for l in out.splitlines() if l.strip().startswith(name)).split()[1]
        for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(unit):
                return float(value[: -len(unit)]) * factor
        return float(value)

    return rps, percentile("50%"), percentile("99%")


def mix_wrk(url, seconds, root, args):
    """The Lua script's counters: {name: number}."""
    out = wrk_run(url, seconds, root / "bench" / "crud.lua", args)
    counts = {}
    for line in out.splitlines():
        if line.startswith("crud "):
            name, value = line[5:].rsplit(" ", 1)
            counts[name] = int(value)
    return Counter(counts)


def wait_healthy(port, get_status, path="/api/health"):
    started = time.perf_counter()
    while get_status(port, path) != 200:
        if time.perf_counter() - started > 10:
            raise SystemExit("the server did not become healthy in 10 s")
        time.sleep(0.01)


def warm(port, paths):
    """Asks every path once; returns the first item's body (the static route serves it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    first = None
    for path in paths:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"warm-up: {path} answered {response.status}")
        first = first or body
    conn.close()
    return first


def check_put_of_missing_id(port, token):
    """PUT does not create: a missing id is a 404 (so the upserts' new ids are POSTed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"title": "Nobody", "year": 2000, "genres": ["Drama"]})
    conn.request("PUT", f"/api/movies/{RESERVED_FIRST - 1}", body=body,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def static_route(handler, body, seconds, root, free_port, get_status, scripted=None):
    """`handler bench-static` serving `body` from memory on the same HTTP stack as `serve`, under
    plain wrk with the mix's threads, connections and duration: ((req/s, p50, p99), and with
    `scripted` (ids file, mix) the mix's own script against it too (every answer a 200 of `body`))."""
    port = free_port()
    static = subprocess.Popen([str(handler), "bench-static", "--file", str(body), "--port", str(port)])
    try:
        wait_healthy(port, get_status, "/")
        plain = plain_wrk(f"http://127.0.0.1:{port}/", seconds)
        counts = None
        if scripted:
            ids_file, weights = scripted
            counts = mix_wrk(f"http://127.0.0.1:{port}", seconds, root,
                             ("none", ids_file, RESERVED_FIRST, RESERVED_COUNT, 990_000_000, SEED, weights))
        return plain, counts
    finally:
        static.terminate()
        static.wait()


MIXES = {"mix": "75,15,5,5", "reads only": "75,0,5,0"}  # items, patches, lists, upserts (bench/crud.lua)


def summarise(c):
    """req/s, errors, hits and GETs per kind, writes answered, from one run's counters."""
    seconds = c["duration_us"] / 1e6
    statuses = {name[7:]: n for name, n in c.items() if name.startswith("status ")}
    gets = {kind: sum(n for name, n in c.items() if name.startswith(kind + " ")) for kind in ("item", "list")}
    return {
        "rps": c["requests"] / seconds,
        "errors": sum(n for status, n in statuses.items() if not status.startswith("2")) + c["socket_errors"],
        "gets": gets,
        "hits": {kind: c[kind + " HIT"] for kind in gets},
        "writes_per_s": (sum(statuses.values()) - sum(gets.values())) / seconds,
        "statuses": statuses,
    }


def bench_crud(handler, env_for, root, out, database_url, psql, seconds, synchronous_commit, sh, free_port, get_status):
    """`psql`, `sh`, `free_port` and `get_status` are the runner's helpers (bench.py). A
    `database_url` of `sqlite` runs the mix on a new SQLite file (the embedded default). Returns where it ran
    and, per run, its ratio to the static route, errors, p99 and GET hit ratio."""
    if database_url == "sqlite":
        path = out / "crud.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        database_url = f"sqlite://{path}"
        where = "SQLite, WAL, synchronous=NORMAL"
    else:
        psql("test", "SET client_min_messages = warning", f"DROP DATABASE IF EXISTS {DATABASE}",
             f"CREATE DATABASE {DATABASE}", f"ALTER DATABASE {DATABASE} SET synchronous_commit = {synchronous_commit}")
        where = f"PostgreSQL, synchronous_commit={synchronous_commit}"
    print(f"\nCRUD-profile mix (movies on {where}; wrk -t{THREADS} "
          f"-c{CONNECTIONS} -d{seconds}s; 75% GET by id over {HOT_IDS:,} hot ids, 15% PATCH of one, 5% list of {LISTS}, "
          "5% upsert (PUT of a reserved row or POST of a new one); each run warmed first)")
    movies = reserved_csv(root, out)
    ids_file, ids = hot_ids(root, out)
    lists = lua_lists(root)
    assert len(lists) == LISTS, lists
    email, password = f"bench-crud-{os.getpid()}@example.com", "bench password"
    sh(str(handler), "users", "create", "--email", email, "--password-stdin", "--admin",
       env=env_for(database_url), input=password + "\n")

    static_body = out / "crud-item.json"
    runs, statics, put_missing = {}, [], None
    for label, extra in (("in-process", {}), ("redis", {"REDIS_URL": REDIS_URL})):
        # Every cache starts from the same rows: the movies and the reserved rows, nothing written.
        sh(str(handler), "import", "--dataset", "movies", "--file", str(movies), env=env_for(database_url))
        prefix = f"bench-crud-{os.getpid()}-{label}"
        port = free_port()
        server = subprocess.Popen([str(handler), "serve"], env=env_for(
            database_url, FUNCTIONS_CUSTOMHANDLER_PORT=str(port), CACHE_PREFIX=prefix, JWT_SECRET=JWT_SECRET, **extra))
        try:
            wait_healthy(port, get_status)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/api/auth/login", body=json.dumps({"email": email, "password": password}),
                         headers={"Content-Type": "application/json"})
            token = json.loads(conn.getresponse().read())["access_token"]
            conn.close()
            put_missing = check_put_of_missing_id(port, token)
            for n, (mix, weights) in enumerate(MIXES.items()):
                body = warm(port, [f"/api/movies/{i}" for i in ids] + lists)
                if not statics:
                    # The baseline before the first run (and again after the last): the static
                    # route serving this film's JSON, what 75% of the mix answers.
                    static_body.write_bytes(body)
                    statics.append(static_route(handler, static_body, seconds, root, free_port, get_status))
                # POSTed ids: a range of their own per cache and run (and per wrk thread in it).
                new_first = NEW_FIRST[label] + n * 10_000_000
                runs[f"{mix}, {label} cache"] = mix_wrk(
                    f"http://127.0.0.1:{port}", seconds, root,
                    (token, ids_file, RESERVED_FIRST, RESERVED_COUNT, new_first, SEED, weights))
        finally:
            server.terminate()
            server.wait()
            if extra:
                keys = sh("redis-cli", "--scan", "--pattern", f"{prefix}:*").splitlines()
                for i in range(0, len(keys), 1000):
                    sh("redis-cli", "unlink", *keys[i:i + 1000])
    statics.append(static_route(handler, static_body, seconds, root, free_port, get_status,
                                scripted=(ids_file, MIXES["mix"])))
    base_rps = statistics.mean(rps for (rps, _, _), _ in statics)
    scripted = statics[-1][1]
    scripted_rps = summarise(scripted)["rps"]

    print(f"  {'':<30} {'req/s':>9} {'x static':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'GET hits':>8} "
          f"{'items':>6} {'lists':>6} {'writes/s':>8}")
    for when, ((rps, p50, p99), _) in zip(("before", "after"), statics):
        print(f"  {'static route, plain wrk, ' + when:<30} {rps:>9,.0f} {rps / base_rps:>8.3f} {p50:>7.2f} {p99:>7.2f}   "
              f"(baseline: the {static_body.stat().st_size}-byte film from memory; 1.00 = their mean)")
    print(f"  {'static route, the mix script':<30} {scripted_rps:>9,.0f} {scripted_rps / base_rps:>8.3f} "
          f"{scripted['p50_us'] / 1000:>7.2f} {scripted['p99_us'] / 1000:>7.2f}   (the client work of the mix, for scale)")
    for label, c in runs.items():
        s = summarise(c)
        gets, hits = s["gets"], s["hits"]
        print(f"  {label:<30} {s['rps']:>9,.0f} {s['rps'] / base_rps:>8.3f} {c['p50_us'] / 1000:>7.2f} "
              f"{c['p99_us'] / 1000:>7.2f} {s['errors']:>6,} {sum(hits.values()) / max(sum(gets.values()), 1):>8.1%} "
              f"{hits['item'] / max(gets['item'], 1):>6.1%} {hits['list'] / max(gets['list'], 1):>6.1%} "
              f"{s['writes_per_s']:>8,.0f}")
    for label, c in runs.items():
        outcomes = {name: n for name, n in sorted(c.items()) if name.split(" ")[0] in ("item", "list")}
        sent = {name[5:]: n for name, n in sorted(c.items()) if name.startswith("sent ")}
        print(f"  {label}: sent " + ", ".join(f"{name} {n:,}" for name, n in sent.items())
              + "; answered " + ", ".join(f"{status} {n:,}" for status, n in sorted(summarise(c)["statuses"].items()))
              + "; " + ", ".join(f"{name} {n:,}" for name, n in outcomes.items())
              + f"; socket errors {c['socket_errors']}; p99.9 {c['p99.9_us'] / 1000:.1f} ms, max {c['max_us'] / 1000:.1f} ms")
    print(f"  PUT of a missing id answers {put_missing} (PUT never creates): the upserts POST their new ids")
    print("  target: the mix at least 0.6x static with 0 errors (HttpArena's top frameworks: 0.50-0.77x of plain JSON)")
    figures = {}
    for label, c in runs.items():
        s = summarise(c)
        figures[label] = {"ratio": s["rps"] / base_rps, "errors": s["errors"], "p99_ms": c["p99_us"] / 1000,
                          "hits": sum(s["hits"].values()) / max(sum(s["gets"].values()), 1)}
    return where, figures
