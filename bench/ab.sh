#!/usr/bin/env bash
# A/B of two handler builds on the CRUD script's requests, alternating (this machine's speed drifts
# by a third within minutes, so only builds measured back to back compare):
#
#   bench/ab.sh OLD_HANDLER NEW_HANDLER [MIX] [CONNECTIONS] [SECONDS] [ROUNDS]
#
# MIX is bench/crud.lua's (items,patches,lists,upserts; default 75,15,5,5; 0,100,0,0: PATCHes
# only). One SQLite file of the movies (bench/out/ab.db, made once), the in-process cache, one
# `handler serve` per run, every hot id asked once before it. Prints per run: requests, p50 and
# p99 (µs), GET misses, and the handler's CPU ticks (user, system) over the run. With REDIS=1 the
# cache is the local Redis (a prefix per run, deleted after it). With PERF=1 the last run's CPU
# profile is kept in bench/out/ab.perf (`perf record -e cpu-clock`, 1 s).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 MIX=${3:-75,15,5,5} C=${4:-64} S=${5:-5} ROUNDS=${6:-2}
OUT=bench/out; mkdir -p $OUT
DB=$OUT/ab.db IDS=$OUT/ab-ids.txt PORT=8711
export DATASETS_DIR=$PWD/datasets RUST_LOG=warn JWT_SECRET="bench secret, bench secret, bench secret!"
export DATABASE_URL=sqlite://$DB
if [ ! -f $DB.ready ]; then
  rm -f $DB $DB-wal $DB-shm
  "$OLD" import --dataset movies --file ../shared/datasets/movies.csv >/dev/null
  echo "ab password" | "$OLD" users create --email ab@example.com --password-stdin --admin >/dev/null
  python3 -c "
import csv, random
ids = sorted(int(r['ID']) for r in csv.DictReader(open('../shared/datasets/movies.csv')))
open('$IDS', 'w').write(''.join(f'{i}\n' for i in random.Random(1).sample(ids, 1000)))"
  touch $DB.ready
fi
run() {
  local prefix=bench-ab-$$-$RANDOM
  if [ "${REDIS:-0}" = 1 ]; then export REDIS_URL=redis://127.0.0.1:6379 CACHE_PREFIX=$prefix; fi
  FUNCTIONS_CUSTOMHANDLER_PORT=$PORT "$1" serve & local pid=$!
  for _ in $(seq 100); do curl -sf localhost:$PORT/api/health >/dev/null && break; sleep 0.1; done
  local token
  token=$(curl -s localhost:$PORT/api/auth/login -H 'content-type: application/json' \
    -d '{"email":"ab@example.com","password":"ab password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  python3 -c "
import http.client
c = http.client.HTTPConnection('127.0.0.1', $PORT)
for i in open('$IDS'):
    c.request('GET', '/api/movies/' + i.strip()); c.getresponse().read()"
  [ "${PERF:-0}" = 1 ] && { perf record -e cpu-clock -F 999 --call-graph dwarf,32768 -p $pid -o $OUT/ab.perf -- sleep 1 >/dev/null 2>&1 & }
  local t0 t1 threads=2
  [ "$C" = 1 ] && threads=1
  t0=$(awk '{print $14" "$15}' /proc/$pid/stat)
  # No reserved rows here: PUTs answer 404 (cheap), POSTs create ids from a random range.
  wrk -t$threads -c$C -d${S}s --latency -s bench/crud.lua http://127.0.0.1:$PORT -- "$token" $IDS 900000001 1 \
      $((RANDOM * 1000 + 100000000)) 7 "$MIX" | awk '/^crud (requests|p50_us|p99_us|item MISS|status 5)/ {printf "%s ", $0}'
  t1=$(awk '{print $14" "$15}' /proc/$pid/stat)
  echo "ticks(user sys) $t0 -> $t1"
  sleep 1; kill $pid; wait $pid 2>/dev/null || true
  if [ "${REDIS:-0}" = 1 ]; then
    redis-cli --scan --pattern "$prefix:*" | xargs -r -d '\n' -n 1000 redis-cli unlink >/dev/null
  fi
}
for round in $(seq "$ROUNDS"); do
  for build in "$OLD" "$NEW"; do echo -n "round $round $build: "; run "$build"; done
done
