#!/usr/bin/env bash
# One command for every benchmark: builds the release binary, then prints each measurement next to
# its baseline from the same run. Needs PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306, psql, sqlite3 and mariadb.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/bench.py "$@"
