#!/usr/bin/env bash
# Measure creating the two-machine playground (one systemd, one no-init):
#   cold: base image AND machine images absent (debootstrap + two image builds)
#   warm: images present, machines absent
# Uses a throwaway base image tag and project, so it never removes images or
# machines anyone else uses. Needs root, a Docker engine and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

base="provision-bench/debian:bookworm-$$"
project="pvbench-$$"
subnet="${BENCH_SUBNET:-10.213.240}"
state="$(mktemp -d)"
bin=target/release/examples/playground

cargo build --release --quiet --example playground
pg() { "$bin" --project "$project" --subnet "$subnet" --state "$state" --base-image "$base" "$@"; }

cleanup() {
  pg down --volumes >/dev/null 2>&1 || true
  images=$(docker images --quiet --filter "label=dev.provision.base-image=$base" | sort -u)
  [ -z "$images" ] || docker rmi --force $images >/dev/null 2>&1 || true
  docker rmi "$base" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT

seconds() {
  local start=$EPOCHREALTIME
  "$@" >/dev/null
  awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }'
}

cold=$(seconds pg up)
pg down --volumes >/dev/null
warm=$(seconds pg up)

printf 'cold (base + machine images absent): %.1f s   (target < 120 s)\n' "$cold"
printf 'warm (images present):               %.1f s   (target < 15 s)\n' "$warm"
