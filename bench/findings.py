#!/usr/bin/env python3
"""Issue 11's findings, each tried again against the release binary (`bench/findings.py`).

Needs the release build (`cargo build --release -p handler`), Redis on 127.0.0.1:6379 and
PostgreSQL on 127.0.0.1:5432 (`psql`). Prints one line per finding with what happens now.
Everything runs on 127.0.0.1 and is bounded in count and time. Standard library only.
"""

import csv
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
HANDLER = ROOT / "target" / "release" / "handler"
MOVIES = ROOT / "datasets" / "movies.csv"
SECRET = "findings secret, findings secret, findings!"
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")


def env(database_url, **extra):
    values = dict(os.environ, DATASETS_DIR=str(ROOT / "datasets"), DATABASE_URL=database_url,
                  RUST_LOG="warn", JWT_SECRET=SECRET)
    values.pop("FUNCTIONS_CUSTOMHANDLER_PORT", None)
    values.update(extra)
    return values


def run(*args, environment, input=None):
    return subprocess.run([str(HANDLER), *args], env=environment, input=input, capture_output=True, text=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, source=None):
    """(status, headers, body bytes, ms); `source` binds the client to a loopback address."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                      source_address=(source, 0) if source else None)
    headers = dict(headers or {})
    if body is not None:
        body = json.dumps(body)
        headers["Content-Type"] = "application/json"
    started = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data, (time.perf_counter() - started) * 1000


def report(number, finding, now):
    print(f"{number:>2}. {finding}\n    now: {now}")


def slow_reader(port, path, stop):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    while not stop.is_set():
        try:
            if not s.recv(8):
                break
        except OSError:
            break
        time.sleep(0.5)
    s.close()


def main():
    if not HANDLER.exists():
        sys.exit("build the release binary first: cargo build --release -p handler")
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "findings.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    sqlite = f"sqlite://{db}"
    run("import", "--dataset", "movies", "--file", str(MOVIES), environment=env(sqlite))
    admin, password = "admin@findings.example", "findings password"
    run("users", "create", "--email", admin, "--password-stdin", "--admin", environment=env(sqlite),
        input=password + "\n")
    port, prefix = free_port(), f"findings-{os.getpid()}"
    server = subprocess.Popen([str(HANDLER), "serve"], env=env(
        sqlite, PORT=str(port), REDIS_URL="redis://127.0.0.1:6379", CACHE_PREFIX=prefix,
        CACHE_MAX_BYTES="1"))  # no near cache: every hit reads Redis (finding 7)
    try:
        while True:
            try:
                if request(port, "GET", "/api/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        token = json.loads(request(port, "POST", "/api/auth/login", {"email": admin, "password": password})[2])["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        findings(port, auth, prefix)
    finally:
        server.terminate()
        server.wait()
    memory_from_keys(sqlite, admin, password)
    firebase_and_import()


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_from_keys(sqlite, admin, password):
    """6b. Long, distinct questions against the in-process cache: what the process holds
    against what the cache says it holds."""
    port = free_port()
    server = subprocess.Popen([str(HANDLER), "serve"], env=env(sqlite, PORT=str(port)))
    try:
        while True:
            try:
                if request(port, "GET", "/api/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        token = json.loads(request(port, "POST", "/api/auth/login", {"email": admin, "password": password})[2])["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        near = lambda: json.loads(request(port, "GET", "/api/admin/cache", headers=auth)[2])["near"]["bytes"]
        before_rss, before_cache = rss_kib(server.pid), near()
        for i in range(3000):
            request(port, "GET", f"/api/movies?genres={i:05d}{'x' * 495}&limit=1")
        after_rss, after_cache = rss_kib(server.pid), near()
        report("6b", "a long key per request grew the process (+52 MB) while the cache reported +0.2 MB",
               f"3,000 distinct 500-character questions: RSS +{(after_rss - before_rss) / 1024:.1f} MiB, "
               f"the cache's own count +{(after_cache - before_cache) / 2**20:.1f} MiB (keys cut to ~270 bytes and counted)")
    finally:
        server.terminate()
        server.wait()


def findings(port, auth, prefix):
    # 1. Slow export readers and the database pool (SQLite: 4 connections).
    stop = threading.Event()
    readers = [threading.Thread(target=slow_reader, args=(port, f"/api/movies/export?year.gte={1990 + i}", stop))
               for i in range(5)]
    for reader in readers:
        reader.start()
    time.sleep(1)
    statuses = [request(port, "GET", f"/api/movies?year={1950 + i}&limit=7")[0] for i in range(20)]
    statuses.append(request(port, "POST", "/api/auth/login", {"email": "nobody@x.y", "password": "wrong wrong"})[0])
    statuses.append(request(port, "PATCH", "/api/movies/595", {"runtime": 113}, auth)[0])
    statuses.append(request(port, "GET", "/api/health")[0])
    stop.set()
    report(1, "five slow export readers took every database connection (503 for everything)",
           f"while 5 read exports 8 bytes at a time: 20 uncached lists, a login, a write and health "
           f"answered {sorted(set(statuses))} (401 is the wrong password)")
    for reader in readers:
        reader.join()

    # 2. Slowloris.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/movies HTTP/1.1\r\nHost: x\r\n")
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < 30:
            time.sleep(1)
            s.sendall(b"X-Slow: 1\r\n")
        cut = "still open after 30 s"
    except OSError:
        cut = f"cut by the server after {time.perf_counter() - started:.1f} s (HEADER_TIMEOUT_SECONDS=10)"
    s.close()
    report(2, "slowloris connections (partial headers) stayed open forever", cut)

    # 3. Repeated filters.
    results = []
    for times in (999, 990, 9):
        status, _, body, ms = request(port, "GET", "/api/movies?" + "&".join(["genres=drama"] * times))
        name = json.loads(body).get("invalid_params", [{}])[0].get("name")
        results.append(f"{times} repeats: {status} naming {name!r} in {ms:.1f} ms")
    report(3, "genres=drama x999 was a 500; x990 cost 1.7 s of database time", "; ".join(results))

    # 4. The timer route.
    status, _, body, _ = request(port, "POST", "/WarmCache", {"Data": {}, "Metadata": {}})
    report(4, "POST /WarmCache needed nothing and listed other callers' queries",
           f"{status} from a caller that is not the Functions host ({json.loads(body)['detail']})")

    # 5. Client addresses and lockout.
    email = f"owner-{os.getpid()}@findings.example"
    run("users", "create", "--email", email, "--password-stdin", environment=env(f"sqlite://{OUT / 'findings.db'}"),
        input="owner password\n")
    rotated = [request(port, "POST", "/api/auth/login", {"email": f"x{i}@y.z", "password": "wrong wrong"},
                       {"X-Forwarded-For": f"198.51.100.{i}"})[0] for i in range(52)]
    guesses = [request(port, "POST", "/api/auth/login", {"email": email, "password": "a guess a guess"},
                       source="127.0.0.2")[0] for _ in range(11)]
    owner = request(port, "POST", "/api/auth/login", {"email": email, "password": "owner password"},
                    source="127.0.0.3")[0]
    report(5, "rotating X-Forwarded-For bypassed the per-address limit; 11 wrong passwords locked the owner out",
           f"52 logins rotating the header from one peer: the last two {rotated[-2:]} (the header is ignored, "
           f"no trusted proxy); 11 guesses from 127.0.0.2 end with {guesses[-1]}; the owner from 127.0.0.3: {owner}")

    # 6. Memory from what clients send.
    cursor = "A" * 57_000
    long_uri = request(port, "GET", f"/api/movies?cursor={cursor}")[0]
    long_cursor = request(port, "GET", f"/api/movies?cursor={'A' * 2100}")
    big = [f"g{i}" for i in range(20_000)]
    writes = [request(port, "PATCH", "/api/movies/595", {"genres": big[: 20_000 - n]}, auth)[0] for n in range(41)]
    request(port, "GET", "/api/movies?genres=comedy&limit=10")
    hits = [request(port, "GET", "/api/movies?genres=comedy&limit=10") for _ in range(50)]
    hit_ms = sorted(h[3] for h in hits if h[1].get("x-cache") == "HIT")
    log = subprocess.run(["redis-cli", "memory", "usage", f"{prefix}:{{movies}}:writes"], capture_output=True, text=True).stdout.strip()
    request(port, "PATCH", "/api/movies/595", {"genres": ["Biography", "Comedy", "Drama"]}, auth)
    report(6, "a 57 KB cursor made a 57 KB key; 41 writes of a 20k-element list made a 25.7 MB log and 0.27 s hits",
           f"57 KB cursor: {long_uri} (MAX_URI_BYTES); 2.1 KB cursor: {long_cursor[0]} naming "
           f"{json.loads(long_cursor[2])['invalid_params'][0]['name']!r}; 41 such writes: {sorted(set(writes))}, "
           f"each too large to record, so a dataset-wide change; the log: {log or 0} bytes in Redis; "
           f"hits after them: p50 {hit_ms[len(hit_ms) // 2]:.2f} ms, max {hit_ms[-1]:.2f} ms ({len(hit_ms)} hits)")

    # 7. A corrupt value in Redis.
    path = "/api/movies?genres=western&limit=20"
    first = request(port, "GET", path)
    key = f"{prefix}:movies:list:genres=western&limit=20"
    stored = subprocess.run(["redis-cli", "strlen", key], capture_output=True, text=True).stdout.strip()
    subprocess.run(["redis-cli", "eval", "redis.call('SET', KEYS[1], string.sub(redis.call('GET', KEYS[1]), 1, 40))",
                    "1", key], capture_output=True)
    again, repaired = request(port, "GET", path), request(port, "GET", path)
    report(7, "a truncated or foreign value in Redis reached an .expect on the hit path",
           f"after overwriting the {stored}-byte entry with 40 foreign bytes: {again[0]} {again[1].get('x-cache')}, "
           f"same body {again[2] == first[2]}; then {repaired[1].get('x-cache')} (repaired)")

    # 8. CSV injection.
    film = {"id": 990777, "title": "=HYPERLINK(\"http://evil.example\",\"x\")", "year": 2030}
    request(port, "POST", "/api/movies", film, auth)
    exported = request(port, "GET", "/api/movies/export?format=csv&year=2030")[2].decode()
    request(port, "DELETE", "/api/movies/990777", None, auth)
    title = list(csv.reader(io.StringIO(exported)))[1][2]
    report(8, "CSV exports wrote formula cells as they are", f"the title cell is {title}")


def firebase_and_import():
    # 9. Firebase emulator mode outside a demo- project.
    result = run("serve", environment=env(f"sqlite://{OUT / 'findings.db'}", AUTH_PROVIDER="firebase",
                                         FIREBASE_PROJECT_ID="real-project", FIREBASE_API_KEY="k",
                                         FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099", PORT=str(free_port())))
    report(9, "unsigned emulator tokens were accepted whenever FIREBASE_AUTH_EMULATOR_HOST was set",
           f"with a project that is not demo-: exit {result.returncode}, {result.stderr.strip()}; email_verified "
           f"is enforced (tests/accounts.rs, Firebase Auth emulator)")

    # 10. A NUL byte in one CSV line, imported into PostgreSQL.
    data = MOVIES.read_bytes()
    lines = data.split(b"\n")
    line = lines[1797]
    comma = line.index(b",", line.index(b",") + 1)
    lines[1797] = line[: comma + 2] + b"\x00" + line[comma + 2:]
    damaged = OUT / "nul.csv"
    damaged.write_bytes(b"\n".join(lines))
    name = f"smartcache_findings_{os.getpid()}"
    subprocess.run(["psql", "-q", PG_ADMIN, "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    try:
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
        result = run("import", "--dataset", "movies", "--file", str(damaged), environment=env(url))
        rejected = [l for l in result.stderr.splitlines() if "line" in l][:1]
        report(10, "a NUL byte in one CSV line failed the whole PostgreSQL import (a COPY line number)",
               f"exit {result.returncode}: {result.stdout.strip()} {rejected}")
    finally:
        subprocess.run(["psql", "-q", PG_ADMIN, "-c", f"DROP DATABASE {name}"], capture_output=True)


if __name__ == "__main__":
    main()
