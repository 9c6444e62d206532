"""Hit ratio of a Zipf mix of reads on two instances, without and with 1% writes
(`bench/run.sh --only zipf`).

Two `handler serve` instances share one PostgreSQL database (`smartcache_bench_zipf`, the movies
imported afresh) and one Redis. 18,000 distinct GETs are built deterministically from
`datasets/movies.csv` and `movies.toml` (what is filterable and sortable): filtered lists in
sorted and limited pages, facets under filters, and items. A fixed random permutation ranks them
and each client draws ranks with Zipf s=1.0 from its own seeded generator, so both runs ask the
same questions in the same order. 8 clients (`--clients`; half on each instance, one keep-alive
connection each) run for `--seconds` (default 20), first with no writes, then with 1% of the
requests (`--write-percent`) a PATCH of a random film's `year` or `genres` by an admin. Each run starts cold: new instances and
a cache prefix of its own (nothing in the near caches or in Redis).

Printed: per run the GETs, the rate, and the X-Cache outcomes; the hit ratio (HIT / all GET
responses) of both runs and their quotient (target: at least 0.95); and the same over the first
GETs both runs made on every client (the same questions in the same order).
Standard library only; everything on 127.0.0.1.
"""

import bisect
import csv
import http.client
import json
import os
import random
import subprocess
import threading
import time
import tomllib
from collections import Counter
from urllib.parse import quote, urlencode

SEED = 20261203
QUESTIONS = {"item": 6_000, "list": 9_000, "facets": 3_000}
ZIPF_S = 1.0
DATABASE = "smartcache_bench_zipf"
REDIS_URL = "redis://127.0.0.1:6379"
JWT_SECRET = "bench secret, bench secret, bench secret!"
PAGES = [(None, 20), ("-metacritic", 20), ("-year", 50), ("title", 100), ("-box_office", 20), ("-meter", 50),
         ("runtime", 20), (None, 100)]
FACETED = ["genres", "year", "rating", "countries", "languages"]


def load_movies(datasets):
    """The declaration, and the films as the handler stores them: columns by name, list columns
    split, numbers parsed, nulls as the declaration says."""
    declaration = tomllib.loads((datasets / "movies.toml").read_text())
    columns = declaration["columns"]
    films = []
    with open(datasets / declaration["source_file"], newline="") as f:
        for line in csv.DictReader(f):
            film = {}
            for column in columns:
                raw = line[column["source"]].strip()
                if raw in declaration["null_values"]:
                    film[column["name"]] = [] if "list_delimiter" in column else None
                elif "list_delimiter" in column:
                    film[column["name"]] = [e.strip() for e in raw.split(column["list_delimiter"]) if e.strip()]
                elif column["type"] == "integer":
                    film[column["name"]] = int(float(raw))
                elif column["type"] == "float":
                    film[column["name"]] = float(raw)
                else:
                    film[column["name"]] = raw
            films.append(film)
    return declaration, films


def atoms(declaration, films):
    """Single filters, each a list of (parameter, value) pairs and the films it matches (a bit set):
    equality on the common values of the filterable text and list columns, years and decades,
    thresholds."""
    filterable = {c["name"] for c in declaration["columns"] if c.get("filter")}
    out = []

    def matching(test):
        return sum(1 << i for i, f in enumerate(films) if test(f))

    def values(film, name):
        value = film[name]
        return [v.lower() for v in value] if isinstance(value, list) else [value.lower()] if value else []

    for name, n in (("genres", 25), ("rating", 10), ("countries", 40), ("languages", 40)):
        assert name in filterable, name
        for value, _ in Counter(v for f in films for v in values(f, name)).most_common(n):
            out.append(([(name, value)], matching(lambda f: value in values(f, name))))
    years = sorted({f["year"] for f in films if f["year"] is not None})
    for year in years:
        out.append(([("year", str(year))], matching(lambda f: f["year"] == year)))
    for decade in range(years[0] // 10 * 10, years[-1] + 1, 10):
        out.append(([("year.gte", str(decade)), ("year.lt", str(decade + 10))],
                    matching(lambda f: f["year"] is not None and decade <= f["year"] < decade + 10)))
    for name, op, thresholds in (("year", "gte", range(1950, 2015, 5)), ("metacritic", "gte", (50, 60, 70, 80, 90)),
                                 ("meter", "gte", (60, 80, 90)), ("runtime", "gte", (120, 150)),
                                 ("runtime", "lt", (90,)), ("oscars", "gte", (1, 3))):
        assert name in filterable, name
        for t in thresholds:
            test = (lambda f: f[name] is not None and f[name] >= t) if op == "gte" else \
                (lambda f: f[name] is not None and f[name] < t)
            out.append(([(f"{name}.{op}", str(t))], matching(test)))
    return out


def questions(datasets):
    """The ranked questions (paths) and the films (for writes), the same on every run."""
    declaration, films = load_movies(datasets)
    sortable = {c["name"] for c in declaration["columns"] if c.get("sort")}
    assert all(s is None or s.lstrip("-") in sortable for s, _ in PAGES)
    singles = atoms(declaration, films)

    def column(atom):
        return atom[0][0][0].split(".")[0]

    # Two filters on different columns (or two genres), and genre, year and one more; kept when
    # some film matches (a question someone browsing the facets would ask).
    rng = random.Random(SEED)
    combos = list(singles)
    combos += [(a[0] + b[0], a[1] & b[1]) for i, a in enumerate(singles) for b in singles[i + 1:]
               if column(a) != column(b) or column(a) == "genres"]
    triples = [(a, b, c) for a in singles if column(a) == "genres" for b in singles if column(b) == "year"
               for c in singles if column(c) in ("countries", "languages", "rating")]
    combos += [(a[0] + b[0] + c[0], a[1] & b[1] & c[1]) for a, b, c in rng.sample(triples, 20_000)]
    filters = sorted({tuple(pairs) for pairs, films_matched in combos if films_matched
                      and all(n == 1 or p == "genres" for p, n in Counter(p for p, _ in pairs).items())})

    def path(base, pairs):
        return base + ("?" + urlencode(pairs, quote_via=quote) if pairs else "")

    lists = sorted({path("/api/movies", list(pairs) + ([("sort", sort)] if sort else []) + [("limit", str(limit))])
                    for pairs in [()] + filters for sort, limit in PAGES})
    facets = sorted({path(f"/api/movies/facets/{name}", pairs)
                     for pairs in [()] + filters for name in FACETED
                     if all(p.split(".")[0] != name for p, _ in pairs)})
    items = sorted(f"/api/movies/{f['id']}" for f in films)
    chosen = (rng.sample(items, QUESTIONS["item"]) + rng.sample(lists, QUESTIONS["list"])
              + rng.sample(facets, QUESTIONS["facets"]))
    rng.shuffle(chosen)  # the ranking: the first is the most asked
    return chosen, films


def kind(path):
    route = path.split("?")[0].split("/")[3:]
    return "list" if not route else "facets" if route[0] == "facets" else "item"


def zipf_cumulative(n, s=ZIPF_S):
    total, out = 0.0, []
    for rank in range(1, n + 1):
        total += 1 / rank**s
        out.append(total)
    return out


def write_for(films, genres, rng):
    """A valid PATCH of a random film: its year moved by one, or one of `genres` added or taken
    away (never the last)."""
    film = rng.choice(films)
    if rng.random() < 0.5 and film["year"] is not None:
        body = {"year": film["year"] + rng.choice((-1, 1))}
    else:
        changed = set(film["genres"]) ^ {rng.choice(genres)}
        body = {"genres": sorted(changed or set(film["genres"]) or {"Drama"})}
    return f"/api/movies/{film['id']}", json.dumps(body)


def client(port, paths, cumulative, seed, write_percent, films, token, deadline, result):
    """Asks questions drawn from its own generator until the deadline, with `write_percent` of its
    requests PATCHes drawn from another (so the questions are the same whatever the writes)."""
    draws, writes = random.Random(seed), random.Random(seed + 1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    outcomes, read_ms, patches, errors, write_ms = [], [], Counter(), Counter(), []
    genres = sorted({g for f in films for g in f["genres"]})
    write_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while time.perf_counter() < deadline:
        write = writes.random() * 100 < write_percent
        if write:
            method, path, body, headers = "PATCH", *write_for(films, genres, writes), write_headers
        else:
            rank = bisect.bisect(cumulative, draws.random() * cumulative[-1])
            method, path, body, headers = "GET", paths[min(rank, len(paths) - 1)], None, {"Accept-Encoding": "gzip"}
        try:
            sent = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
        except OSError as e:
            errors[f"{method} {type(e).__name__}"] += 1
            conn.close()
            continue
        ms = (time.perf_counter() - sent) * 1000
        if write:
            patches[response.status] += 1
            write_ms.append(ms)
            if response.getheader("x-cache-invalidation"):
                errors["invalidation " + response.getheader("x-cache-invalidation")] += 1
        else:
            ok = response.status == 200
            outcomes.append((response.getheader("x-cache") or "none") if ok else f"HTTP {response.status}")
            read_ms.append(ms)
    conn.close()
    result.update(outcomes=outcomes, read_ms=read_ms, patches=patches, errors=errors, write_ms=write_ms)


def run(label, handler, env_for, database_url, write_percent, seconds, clients, paths, films, token_for,
        sh, free_port, get_status):
    """One run from cold: two new instances on a cache prefix of their own, `clients` clients
    spread over them. Returns each client's result and the elapsed seconds; the prefix's keys
    are deleted afterwards."""
    prefix = f"bench-zipf-{os.getpid()}-{label}"
    servers, ports = [], []
    for _ in range(2):
        port = free_port()
        servers.append(subprocess.Popen([str(handler), "serve"], env=env_for(
            database_url, FUNCTIONS_CUSTOMHANDLER_PORT=str(port), REDIS_URL=REDIS_URL,
            CACHE_PREFIX=prefix, JWT_SECRET=JWT_SECRET)))
        ports.append(port)
    try:
        for port in ports:
            started = time.perf_counter()
            while get_status(port, "/api/health") != 200:
                if time.perf_counter() - started > 10:
                    raise SystemExit("an instance did not become healthy in 10 s")
                time.sleep(0.01)
        token = token_for(ports[0]) if write_percent else None
        cumulative = zipf_cumulative(len(paths))
        results = [{} for _ in range(clients)]
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(
            ports[i % 2], paths, cumulative, SEED + i, write_percent, films, token, started + seconds, results[i]))
            for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results, time.perf_counter() - started
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        purge(prefix, sh)


def purge(prefix, sh):
    keys = sh("redis-cli", "--scan", "--pattern", f"{prefix}:*").splitlines()
    for i in range(0, len(keys), 1000):
        sh("redis-cli", "unlink", *keys[i:i + 1000])


def p50(values):
    return sorted(values)[len(values) // 2] if values else float("nan")


def tally(results):
    outcomes = Counter(o for r in results for o in r["outcomes"])
    gets = sum(outcomes.values())
    return outcomes, gets, outcomes["HIT"] / max(gets, 1)


def bench_zipf(handler, env_for, root, database_url, psql, seconds, clients, write_percent, sh, free_port, get_status):
    """`psql`, `sh`, `free_port` and `get_status` are the runner's helpers (bench.py)."""
    paths, films = questions(root / "datasets")
    kinds = Counter(kind(p) for p in paths)
    print(f"\nZipf mix on two instances (movies on PostgreSQL, Redis; {len(paths):,} questions: {kinds['list']:,} lists, "
          f"{kinds['facets']:,} facets, {kinds['item']:,} items; Zipf s={ZIPF_S}; {clients} clients; {seconds} s per run, "
          "each from cold)")
    psql("test", "SET client_min_messages = warning", f"DROP DATABASE IF EXISTS {DATABASE}", f"CREATE DATABASE {DATABASE}")
    sh(str(handler), "import", "--dataset", "movies", "--file", str(root / "datasets" / "movies.csv"),
       env=env_for(database_url))
    email, password = f"bench-zipf-{os.getpid()}@example.com", "bench password"
    sh(str(handler), "users", "create", "--email", email, "--password-stdin", "--admin",
       env=env_for(database_url), input=password + "\n")

    def token_for(port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/auth/login", body=json.dumps({"email": email, "password": password}),
                     headers={"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())["access_token"]

    runs = {}
    print(f"  {'':<10} {'GETs':>8} {'req/s':>7} {'HIT':>8} {'MISS':>7} {'STALE':>6} {'BYPASS':>6} {'errors':>6} "
          f"{'hit ratio':>9} {'HIT p50':>7} {'MISS p50':>8}   PATCH")
    for percent in (0, write_percent):
        label = f"{percent:g}% writes"
        results, elapsed = run(f"w{percent:g}", handler, env_for, database_url, percent, seconds, clients,
                               paths, films, token_for, sh, free_port, get_status)
        runs[label] = results
        outcomes, gets, ratio = tally(results)
        patches = sum((r["patches"] for r in results), Counter())
        errors = sum((r["errors"] for r in results), Counter())
        errors.update({o: n for o, n in outcomes.items() if o not in ("HIT", "MISS", "STALE", "BYPASS")})
        write_ms = [ms for r in results for ms in r["write_ms"]]
        writes = f"{patches[200]:,} ok, p50 {p50(write_ms):.0f} ms, max {max(write_ms):.0f} ms" if write_ms else ""
        hit_ms, miss_ms = ([ms for r in results for o, ms in zip(r["outcomes"], r["read_ms"]) if o == outcome]
                           for outcome in ("HIT", "MISS"))
        writes += "".join(f", {n} HTTP {status}" for status, n in sorted(patches.items()) if status != 200)
        print(f"  {label:<10} {gets:>8,} {(gets + sum(patches.values())) / elapsed:>7,.0f} {outcomes['HIT']:>8,} "
              f"{outcomes['MISS']:>7,} {outcomes['STALE']:>6,} {outcomes['BYPASS']:>6,} {sum(errors.values()):>6,} "
              f"{ratio:>9.1%} {p50(hit_ms):>7.2f} {p50(miss_ms):>8.2f}   {writes}")
        if errors:
            print(f"  {'':<10} errors: {dict(errors)}")
    (base_label, base), (label, loaded) = runs.items()
    base_ratio, ratio = tally(base)[2], tally(loaded)[2]
    print(f"  {'hit ratio, ' + label + ' / ' + base_label:<44} {base_ratio:6.1%} -> {ratio:6.1%}  "
          f"{ratio / base_ratio:5.3f} (target: at least 0.95)")
    # The same questions in the same order: each client's first GETs that both runs made.
    common = [min(len(a["outcomes"]), len(b["outcomes"])) for a, b in zip(base, loaded)]
    same = [tally([{"outcomes": r["outcomes"][:n]} for r, n in zip(rs, common)])[2] for rs in (base, loaded)]
    print(f"  {'the same, over the first GETs of both runs':<44} {same[0]:6.1%} -> {same[1]:6.1%}  "
          f"{same[1] / same[0]:5.3f} ({sum(common):,} GETs, the same questions in the same order)")
