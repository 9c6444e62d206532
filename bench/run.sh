#!/usr/bin/env bash
# One command for every benchmark: builds the release binary, then prints each measurement next to
# its baseline from the same run. Needs PostgreSQL on 127.0.0.1:5432, MariaDB on 127.0.0.1:3306 and Redis on
# 127.0.0.1:6379, psql, sqlite3, mariadb and redis-cli. `--only zipf`: the hit ratio of a Zipf mix with and without writes;
# `--only crud`: the CRUD-profile mix (wrk) against the static route; `--only misses`: uncached 100-row
# pages (wrk) against Datasette (installed from PyPI into bench/out/venv) on the same SQLite file; `--only sync`: a
# 1%-changed flights file imported with `--mode sync` against a full re-import, and the hit ratio after each.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/bench.py "$@"
