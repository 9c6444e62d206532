"""Instructions per request, counted by callgrind (stable on a noisy machine, unlike req/s).

    python3 bench/callgrind.py --handler target/release/handler
                               [--kind miss|hit|hit-redis|static|write|all]
                               [--requests 200] [--encoding gzip|br|identity] [--database-url URL]
                               [--path /api/movies/372]

Imports the movies into a new SQLite file (`bench/out/callgrind.db`; or the database of
`--database-url`, whose `movies` table is replaced), then runs the handler
under `valgrind --tool=callgrind --instr-atstart=no` and counts only the measured requests, one
after another over one keep-alive connection (every thread of the process counted, the kernel
not):
- `miss`: distinct uncached 100-row pages (each checked to be a MISS), in-process cache;
- `hit`: the same cached 100-row page (`genres=drama&limit=100`, in `--encoding`: gzip unless
  told; `--path` asks another, e.g. the item `/api/movies/372`), in-process cache;
- `hit-redis`: that hit with the cache in the local Redis (`REDIS_URL`, default
  redis://127.0.0.1:6379), under a prefix of the run's own, deleted afterwards;
- `static`: `handler bench-static` serving that page's bytes (in the same encoding) from memory
  on the same HTTP stack: the floor a hit is measured against;
- `write`: PATCHes of one film by an admin (made with `handler users create --admin`),
  `metacritic` and `title` in turn, in-process cache (not part of `all`). Only the handler's
  instructions: the database's own work (PostgreSQL's) is not counted.
Prints the instructions per request of each; profiles stay in bench/out/callgrind.<kind>.out for
`callgrind_annotate`.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PAGE = "/api/movies?genres=drama&limit=100"
KINDS = ("miss", "hit", "hit-redis", "static")
WRITE_ID = 372  # the first film of the movies file; `write` PATCHes it
ADMIN = ("callgrind-admin@example.com", "callgrind admin password")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def miss_path(i):
    return f"/api/movies?runtime.gte={1 + i % 60}&year.gte={1950 + i // 60}&sort=runtime&limit=100"


def connect(port, server):
    for _ in range(240):
        if server.poll() is not None:
            sys.exit("the server under valgrind exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/api/health")
            conn.getresponse().read()
            return conn
        except OSError:
            time.sleep(0.25)
    sys.exit("the server did not start under valgrind")


ENCODING = "gzip"


def ask(conn, path, want_cache, warming=False):
    """`warming`: any 200 will do (a brotli copy is made only after the first ask for it)."""
    conn.request("GET", path, headers={"Accept-Encoding": ENCODING})
    response = conn.getresponse()
    body = response.read()
    sent = response.getheader("Content-Encoding") or "identity"
    if (response.status != 200 or (sent != ENCODING and not warming)
            or (want_cache and response.getheader("X-Cache") != want_cache)):
        sys.exit(f"{path}: {response.status} {response.getheader('X-Cache')} {body[:200]!r}")
    return body


def login(conn):
    email, password = ADMIN
    conn.request("POST", "/api/auth/login", body=json.dumps({"email": email, "password": password}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"login: {response.status} {body[:200]!r}")
    return json.loads(body)["access_token"]


def patch(conn, token, n):
    """PATCHes the film WRITE_ID: its metacritic, or its title, in turn."""
    fields = {"metacritic": 1 + n % 100} if n % 2 else {"title": f"Callgrind title {n}"}
    conn.request("PATCH", f"/api/movies/{WRITE_ID}", body=json.dumps(fields),
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"PATCH: {response.status} {body[:200]!r}")
    return body


def count(kind, command, env, port, requests):
    """Runs `command` under callgrind, warms it up, counts `requests` asks; → instructions each."""
    profile = OUT / f"callgrind.{kind}.out"
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                               f"--callgrind-out-file={profile}", *command],
                              env=env, stderr=subprocess.DEVNULL)
    try:
        conn = connect(port, server)
        if kind == "write":
            token = login(conn)
            warm = [lambda n=n: patch(conn, token, n) for n in range(50)]
            measured = [lambda n=n: patch(conn, token, n) for n in range(50, 50 + requests)]
        elif kind == "miss":
            warm = [miss_path(i) for i in range(50)]
            measured = [(miss_path(i), "MISS") for i in range(1000, 1000 + requests)]
        else:
            want = None if kind == "static" else "HIT"
            warm = [PAGE] * 50
            measured = [(PAGE, want)] * requests
        if kind != "write":
            warm = [lambda path=path: ask(conn, path, None, warming=True) for path in warm]
            measured = [lambda path=path, want=want: ask(conn, path, want) for path, want in measured]
        for request in warm:
            request()
        control = ["callgrind_control", "-i"]
        subprocess.run(control + ["on", str(server.pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        body = b""
        for request in measured:
            body = request()
        subprocess.run(control + ["off", str(server.pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    finally:
        server.terminate()
        server.wait()
    annotate = subprocess.run(["callgrind_annotate", str(profile)], capture_output=True, text=True)
    total = next(line for line in annotate.stdout.splitlines() if "PROGRAM TOTALS" in line)
    return int(total.split()[0].replace(",", "")) / requests, profile, body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--handler", type=Path, required=True)
    parser.add_argument("--kind", choices=KINDS + ("write", "all"), default="all")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--encoding", choices=("gzip", "br", "identity"), default="gzip")
    parser.add_argument("--database-url", help="instead of a new SQLite file (its movies replaced)")
    parser.add_argument("--path", help="what hit, hit-redis and static ask (default: the 100-row page)")
    args = parser.parse_args()
    global ENCODING, PAGE
    ENCODING, PAGE = args.encoding, args.path or PAGE
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "callgrind.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    database_url = args.database_url or f"sqlite://{db}"
    base = dict(os.environ, DATASETS_DIR=str(ROOT / "datasets"), DATABASE_URL=database_url,
                RUST_LOG="warn", JWT_SECRET="callgrind-bench-secret-0123456789abcdef")
    base.pop("REDIS_URL", None)
    subprocess.run([str(args.handler), "import", "--dataset", "movies",
                    "--file", str(ROOT / "datasets" / "movies.csv")],
                   env=base, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if args.kind == "write":
        subprocess.run([str(args.handler), "users", "create", "--email", ADMIN[0], "--password-stdin", "--admin"],
                       env=base, input=ADMIN[1] + "\n", text=True, capture_output=True)  # fails if it exists

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    prefix = f"bench-callgrind-{os.getpid()}"
    page_file = OUT / f"callgrind.page.{args.encoding}{''.join(c if c.isalnum() else '_' for c in PAGE)}"
    kinds = KINDS if args.kind == "all" else (args.kind,)
    results = []
    try:
        for kind in kinds:
            port = free_port()
            env = dict(base, FUNCTIONS_CUSTOMHANDLER_PORT=str(port))
            command = [str(args.handler), "serve"]
            if kind == "hit-redis":
                env.update(REDIS_URL=redis_url, CACHE_PREFIX=prefix)
            if kind == "static":
                if not page_file.exists():
                    sys.exit("static needs the page's bytes: run it with --kind all or after hit")
                command = [str(args.handler), "bench-static", "--file", str(page_file),
                           "--port", str(port)]
                if args.encoding != "identity":
                    command += ["--content-encoding", args.encoding]
            per_request, profile, body = count(kind, command, env, port, args.requests)
            results.append((kind, per_request, profile))
            if kind == "hit":
                page_file.write_bytes(body)  # the stored bytes: the static baseline's body
    finally:
        if "hit-redis" in kinds:
            keys = subprocess.run(["redis-cli", "-u", redis_url, "--scan", "--pattern", f"{prefix}*"],
                                  capture_output=True, text=True).stdout.split()
            if keys:
                subprocess.run(["redis-cli", "-u", redis_url, "DEL", *keys], capture_output=True)
    for kind, per_request, profile in results:
        print(f"{kind:>9}: {per_request:>12,.0f} instructions per request "
              f"({args.requests} requests, {args.encoding}; profile: {profile})")


if __name__ == "__main__":
    main()
