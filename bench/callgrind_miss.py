"""Instructions per uncached 100-row page, counted by callgrind (stable on a noisy machine).

    python3 bench/callgrind_miss.py --handler target/release/handler [--requests 200]

Serves a copy of `bench/out/misses.db` (made by `bench/run.sh --only misses`) with the in-process
cache under `valgrind --tool=callgrind --instr-atstart=no`, asks 50 distinct questions to warm
up, then counts only the next `--requests` distinct questions (each a MISS, checked), one after
another over one connection: every thread of the process counted, the kernel not. Prints the
instructions per request; the profile stays in bench/out/callgrind.miss.out for
`callgrind_annotate`.
"""

import argparse
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--handler", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    source = OUT / "misses.db"
    if not source.exists():
        sys.exit("bench/out/misses.db is missing: run `bench/run.sh --only misses` first")
    db = OUT / "callgrind.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, db)
    profile = OUT / "callgrind.miss.out"
    port = free_port()
    env = dict(os.environ, DATASETS_DIR=str(ROOT / "datasets"), DATABASE_URL=f"sqlite://{db}",
               RUST_LOG="warn", FUNCTIONS_CUSTOMHANDLER_PORT=str(port))
    env.pop("REDIS_URL", None)
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                               f"--callgrind-out-file={profile}", str(args.handler), "serve"],
                              env=env, stderr=subprocess.DEVNULL)
    try:
        conn = None
        for _ in range(240):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port)
                conn.request("GET", "/api/health")
                conn.getresponse().read()
                break
            except OSError:
                time.sleep(0.25)
        else:
            sys.exit("the handler did not start under valgrind")

        def ask(i):
            path = f"/api/movies?runtime.gte={1 + i % 60}&year.gte={1950 + i // 60}&sort=runtime&limit=100"
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or response.getheader("X-Cache") != "MISS":
                sys.exit(f"{path}: {response.status} {response.getheader('X-Cache')} {body[:200]!r}")

        for i in range(50):
            ask(i)
        control = ["callgrind_control", "-i"]
        subprocess.run(control + ["on", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
        for i in range(1000, 1000 + args.requests):
            ask(i)
        subprocess.run(control + ["off", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
    finally:
        server.terminate()
        server.wait()
    annotate = subprocess.run(["callgrind_annotate", str(profile)], capture_output=True, text=True)
    total = next(line for line in annotate.stdout.splitlines() if "PROGRAM TOTALS" in line)
    instructions = int(total.split()[0].replace(",", ""))
    print(f"uncached 100-row page (SQLite, in-process cache): {instructions / args.requests:,.0f} "
          f"instructions per request ({args.requests} requests; profile: {profile})")


if __name__ == "__main__":
    main()
