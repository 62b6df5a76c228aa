#!/usr/bin/env bash
# A new app release under load: provision's start-first rollout against a
# plain stop-then-start replacement, side by side in one run (issue 12).
# While wrk (Debian's package) requests the page through Nginx, the app's
# page heading changes and provision runs; wrk reports the requests sent,
# the failed ones (non-2xx answers and socket errors) and the latency
# percentiles of its window, which covers the whole run (the rebuild and
# the switch). Arms alternate round by round.
#
#   bench/rollout.sh [ROUNDS]    # default 2 rounds of each arm
#   bench/rollout.sh down        # remove the bench machines
#
# Environment: BENCH_SECONDS (wrk's window, default 60; it must outlast a
# run, the script says when it did not), BENCH_CONNECTIONS (default 8).
#
# Columns: responses (wrk's completed requests), non-2xx among them, socket
# errors (connect, read, write, timeout: requests that got no answer), p99
# latency of the window, and the run's wall time. wrk's raw output stays in
# bench/.rollout/wrk-ARM-ROUND.txt.
#
# Machines: project `pvrollb`, web 10.215.4.10 (redis, rails, nginx) and
# db 10.215.4.11 (PostGIS), kept between runs; the app is a copy of
# examples/rails_app in bench/.rollout/ (git-ignored).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/bench/.rollout"
bin="$root/target/release/provision"
rounds="${1:-2}"
secs="${BENCH_SECONDS:-60}"
conns="${BENCH_CONNECTIONS:-8}"
url=http://10.215.4.10/
mkdir -p "$work"
cd "$work"
log() { printf '%s\n' "$*" >&2; }

write_hosts() { # REPLACE
  cat >hosts.toml <<TOML
[project]
name = "pvrollb"

[app]
source = "app"

[secrets.PG_PASSWORD]
generate = true

[secrets.SECRET_KEY_BASE]
generate = true

[hosts.web]
machine = "local"
address = "10.215.4.10"

[hosts.db]
machine = "local"
address = "10.215.4.11"

[services.postgis]
host = "db"
template = "postgis"
publish = ["5432"]
volumes = ["pgdata:/var/lib/postgresql/data"]
secrets = ["PG_PASSWORD"]

[services.redis]
host = "web"
template = "redis"
volumes = ["redis-data:/data"]

[services.rails]
host = "web"
template = "rails"
uses = ["postgis", "redis"]
secrets = ["SECRET_KEY_BASE"]
env = { RAILS_ENV = "production", RAILS_LOG_TO_STDOUT = "1" }
replace = "$1"

[services.nginx]
host = "web"
template = "nginx"
publish = ["80"]
public = true
uses = ["rails"]
TOML
}

if [ "${1:-}" = down ]; then
  [ -f hosts.toml ] || write_hosts start-first
  "$bin" --hosts hosts.toml down --volumes || true
  exit 0
fi
command -v wrk >/dev/null || { log "wrk is missing: apt-get install wrk"; exit 1; }
(cd "$root" && cargo build --release --quiet)
[ -d app ] || cp -r "$root/examples/rails_app" app
write_hosts start-first
log "machines and a first converge (quick when already done)"
"$bin" --hosts hosts.toml >/dev/null 2>&1 || "$bin" --hosts hosts.toml
until curl -fsS -o /dev/null "$url"; do sleep 1; done

heading() { # TEXT
  sed -i "s|<h1>.*</h1>|<h1>$1</h1>|" app/app/controllers/visits_controller.rb
}

results=()
one() { # ARM ROUND
  local arm=$1 n=$2 out took started
  write_hosts "$arm"
  heading "Release $arm $n $(date +%s)"
  out=$(mktemp)
  wrk -t2 -c"$conns" -d"${secs}s" --latency "$url" >"$out" 2>&1 &
  local w=$!
  sleep 1
  started=$(date +%s.%N)
  "$bin" --hosts hosts.toml >/dev/null 2>&1 || { log "$arm: provision failed"; "$bin" --hosts hosts.toml; }
  took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  wait $w
  local done non2xx sockerr p99
  done=$(awk '/requests in/ {print $1}' "$out")
  non2xx=$(awk -F': ' '/Non-2xx/ {print $2}' "$out")
  sockerr=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  if awk -v t="$took" -v s="$secs" 'BEGIN {exit !(t + 1 > s)}'; then
    log "warning: the run ($took s) outlasted wrk's window ($secs s): raise BENCH_SECONDS"
  fi
  results+=("$(printf '%-12s %5s %9s %8s %8s %10s %9.1f' "$arm" "$n" "$done" "${non2xx:-0}" "${sockerr:-0}" "$p99" "$took")")
  log "${results[-1]}"
  mv "$out" "wrk-$arm-$n.txt"
}

for n in $(seq 1 "$rounds"); do
  if (( n % 2 )); then one start-first "$n"; one stop-first "$n"; else one stop-first "$n"; one start-first "$n"; fi
done
write_hosts start-first
printf '\nwrk -c%s, %s s window per run; a run = rebuild of rails + replacement\n' "$conns" "$secs"
printf '%-12s %5s %9s %8s %8s %10s %9s\n' arm round responses non-2xx sock_err p99 run_s
printf '%s\n' "${results[@]}"
