#!/usr/bin/env bash
# The `lambda` build under the Lambda runtime emulator: `cargo lambda watch` runs the handler as
# the Lambda runtime would (no arguments, AWS_LAMBDA_RUNTIME_API set) and `cargo lambda invoke`
# sends it an API Gateway HTTP API event for GET /api/movies/595. Needs cargo-lambda (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
port="${LAMBDA_INVOKE_PORT:-9009}"
work="$(mktemp -d)"
trap 'kill "$watch" 2>/dev/null || true; wait "$watch" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build -q -p handler --features lambda
DATABASE_URL="sqlite://$work/movies.db" DATASETS_DIR=datasets RUST_LOG=warn \
  target/debug/handler import --dataset movies --file datasets/movies.csv >/dev/null 2>"$work/import.log" \
  || { cat "$work/import.log" >&2; exit 1; }

cargo lambda watch -p handler --features lambda -P "$port" \
  --env-var "DATABASE_URL=sqlite://$work/movies.db" --env-var "DATASETS_DIR=$PWD/datasets" \
  >"$work/watch.log" 2>&1 &
watch=$!
for _ in $(seq 1 120); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.5
done

answer="$(cargo lambda invoke handler -P "$port" --data-file package/lambda-event.json)"
if [[ "$answer" != *'"statusCode":200'* || "$answer" != *'The Intouchables'* ]]; then
  echo "unexpected answer: $answer" >&2
  cat "$work/watch.log" >&2
  exit 1
fi
echo "cargo lambda invoke: 200, movie 595 answered by the router under the Lambda runtime"
