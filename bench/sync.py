"""A nightly refresh with 1% of the rows changed: `import --mode sync` against a full re-import
of the same file (`bench/run.sh --only sync`).

For each engine (PostgreSQL with Redis; SQLite with Redis), and for each mode (replace, then
sync), from a fresh database and cache prefix:
1. `handler import` of flights (336,776 rows), then one `handler serve` on Redis;
2. 500 cached questions warmed (each asked twice; the second answer's X-Cache is "before");
3. `handler import --mode <mode>` of the edited file, timed (the command's wall clock);
4. the 500 questions asked again: the HIT ratio "after", per kind and in all.

The edited file: 1% of the rows (3,368, chosen with a fixed seed) get other delays (dep_delay
and arr_delay moved by 1 to 30 minutes), as a refreshed feed would correct them; every other
byte is the same. The questions (fixed seed, drawn from the file): 150 flights by id, 150 list
pages of 20 (by day, by route, by carrier and month sorted by delay), 100 counts and 100 facets
under filters (by month, day, origin, carrier, route).

Printed: both import times and their ratio (target: sync no slower than the full import), and
the hit ratios (target: after a sync at least 90% of before). Standard library only; everything
on 127.0.0.1.
"""

import csv
import http.client
import os
import random
import subprocess
import time
from collections import Counter

SEED = 20261203
CHANGED_FRACTION = 0.01
DATABASE = "smartcache_bench_sync"
REDIS_URL = "redis://127.0.0.1:6379"


def edited_copy(source, target):
    """The flights file with 1% of its rows' delays changed; returns how many rows changed."""
    rng = random.Random(SEED)
    with open(source, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    dep, arr = header.index("dep_delay"), header.index("arr_delay")
    chosen = rng.sample(range(len(body)), round(len(body) * CHANGED_FRACTION))
    for i in chosen:
        for column in (dep, arr):
            value = body[i][column]
            shift = rng.randint(1, 30)
            body[i][column] = str(int(value) + shift) if value not in ("", "NA") else str(shift)
    with open(target, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
    return len(chosen), header, body


def questions(header, body):
    """500 distinct questions drawn from the file with a fixed seed: (kind, path)."""
    rng = random.Random(SEED + 1)
    col = {name: header.index(name) for name in ("month", "day", "carrier", "origin", "dest")}

    def drawn(quota, make):
        paths = {}
        for n in range(quota * 100):
            if len(paths) == quota:
                break
            row = body[rng.randrange(len(body))]
            paths.setdefault(make(n, {name: row[i] for name, i in col.items()}), None)
        return list(paths)

    items = drawn(150, lambda n, r: f"/api/flights/{rng.randrange(1, len(body) + 1)}")
    lists = drawn(150, lambda n, r: [
        f"/api/flights?month={r['month']}&day={r['day']}&limit=20",
        f"/api/flights?origin={r['origin']}&dest={r['dest']}&limit=20",
        f"/api/flights?carrier={r['carrier']}&month={r['month']}&sort=-dep_delay&limit=20"][n % 3])
    counts = drawn(100, lambda n, r: "/api/flights/count?" + [
        f"month={r['month']}", f"month={r['month']}&day={r['day']}", f"origin={r['origin']}&dest={r['dest']}",
        f"carrier={r['carrier']}&month={r['month']}"][n % 4])
    facets = drawn(100, lambda n, r: f"/api/flights/facets/{['carrier', 'origin', 'dest'][n % 3]}?" + [
        f"month={r['month']}", f"origin={r['origin']}", f"month={r['month']}&day={r['day']}"][n % 3])
    return ([("item", p) for p in items] + [("list", p) for p in lists] + [("count", p) for p in counts]
            + [("facets", p) for p in facets])


def ask_all(port, asked):
    """Asks every question once on one keep-alive connection: Counter of (kind, X-Cache)."""
    outcomes = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for kind, path in asked:
        conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        response.read()
        if response.status not in (200, 404):
            raise SystemExit(f"{path}: HTTP {response.status}")
        outcomes[(kind, response.getheader("x-cache") or "none")] += 1
    conn.close()
    return outcomes


def hit_ratio(outcomes, kind=None):
    hits = sum(n for (k, x), n in outcomes.items() if x == "HIT" and kind in (None, k))
    total = sum(n for (k, _), n in outcomes.items() if kind in (None, k))
    return hits / max(total, 1)


def one_mode(mode, handler, env, original, edited, asked, sh, free_port, get_status):
    """A fresh import of the original, warmed questions, the timed re-import in `mode`, the
    questions again. Returns (seconds, outcomes before, outcomes after, summary line)."""
    sh(str(handler), "import", "--dataset", "flights", "--file", str(original), "--mode", "replace", env=env)
    port = free_port()
    server = subprocess.Popen([str(handler), "serve"], env=dict(env, FUNCTIONS_CUSTOMHANDLER_PORT=str(port)))
    try:
        started = time.perf_counter()
        while get_status(port, "/api/health") != 200:
            if time.perf_counter() - started > 10:
                raise SystemExit("the instance did not become healthy in 10 s")
            time.sleep(0.01)
        ask_all(port, asked)
        before = ask_all(port, asked)
        started = time.perf_counter()
        summary = sh(str(handler), "import", "--dataset", "flights", "--file", str(edited), "--mode", mode, env=env)
        seconds = time.perf_counter() - started
        after = ask_all(port, asked)
    finally:
        server.terminate()
        server.wait()
    return seconds, before, after, summary.strip().splitlines()[-1] if summary.strip() else ""


def bench_sync(handler, env_for, out, pg_url, psql, flights_csv, sh, free_port, get_status, runs):
    print("\nSync of a 1%-changed flights file against a full re-import (one `handler serve` on Redis;"
          " 500 warmed questions)")
    edited = out / "flights-1pct-changed.csv"
    changed, header, body = edited_copy(flights_csv, edited)
    asked = questions(header, body)
    print(f"  {changed:,} of {len(body):,} rows changed; {len(asked)} distinct questions "
          f"({', '.join(f'{k} {n}' for k, n in Counter(k for k, _ in asked).items())})")
    engines = [("PostgreSQL", pg_url), ("SQLite", f"sqlite://{out / 'sync-bench.db'}")]
    for engine, url in engines:
        results = {}
        for mode in ("replace", "sync"):
            best = None
            for run in range(runs):
                if engine == "PostgreSQL":
                    psql("test", "SET client_min_messages = warning", f"DROP DATABASE IF EXISTS {DATABASE}",
                         f"CREATE DATABASE {DATABASE}")
                else:
                    for suffix in ("", "-wal", "-shm"):
                        (out / f"sync-bench.db{suffix}").unlink(missing_ok=True)
                prefix = f"bench-sync-{os.getpid()}-{engine}-{mode}-{run}"
                env = env_for(url, REDIS_URL=REDIS_URL, CACHE_PREFIX=prefix)
                result = one_mode(mode, handler, env, flights_csv, edited, asked, sh, free_port, get_status)
                if best is None or result[0] < best[0]:
                    best = result
            results[mode] = best
        full_s, sync_s = results["replace"][0], results["sync"][0]
        print(f"  {engine}: full import {full_s:6.2f} s, sync {sync_s:6.2f} s: sync takes "
              f"{sync_s / full_s:.2f}x the full import's time (target: at most 1.00x)")
        print(f"    {results['sync'][3]}")
        for mode in ("replace", "sync"):
            _, before, after = results[mode][:3]
            kinds = ", ".join(f"{kind} {hit_ratio(after, kind):.0%}" for kind in ("item", "list", "count", "facets"))
            print(f"    after {mode:<7}: hit ratio {hit_ratio(before):.1%} before -> {hit_ratio(after):.1%} after "
                  f"(quotient {hit_ratio(after) / max(hit_ratio(before), 1e-9):.3f}; {kinds})")
        quotient = hit_ratio(results["sync"][2]) / max(hit_ratio(results["sync"][1]), 1e-9)
        print(f"    target: after a sync at least 90% of before: {'met' if quotient >= 0.9 else 'NOT met'}"
              f" ({quotient:.3f})")
    for suffix in ("", "-wal", "-shm"):
        (out / f"sync-bench.db{suffix}").unlink(missing_ok=True)
