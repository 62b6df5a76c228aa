#!/usr/bin/env bash
# Swarm mode on 5 local machines (issue 14, "Measured"): one manager (n1),
# PostGIS pinned to n2, Redis to n3, Nginx to n1 (port 80), Rails with
# replicas = 3 (tests/swarm.rs's hosts.toml).
#   (a) cold stand-up: the machines made from nothing (`--machines-only`),
#       then `provision --hosts hosts.toml` on those blank machines;
#   (b) the no-op rerun against one fresh `ssh root@n1 true` (OpenSSH, no
#       connection sharing), ROUNDS interleaved rounds (the order alternates
#       round by round), medians and their ratio (target <= 1.5x);
#   (c) the loss of a node running one Rails task (n4 or n5, which run
#       nothing pinned): while a client requests the page through Nginx, that
#       node's machine is stopped (`docker stop`); requests sent and failed,
#       and the time until 3 Rails tasks run again on ready nodes (polled
#       with `docker service ps` on the manager over SSH).
# At the end a run brings the stopped machine back (its time is printed).
#
#   bench/swarm.sh [ROUNDS]     # default 5 rounds of (b)
#   bench/swarm.sh down         # remove the bench machines and their volumes
#
# Environment: BENCH_COLD=0 skips (a) and reuses the machines as they are
# (a converge first); BENCH_CLIENT=wrk|curl (default wrk when installed:
# `wrk -t2 -c8`, keep-alive; curl: one connection per request, as the
# end-to-end test counts); BENCH_SECONDS (the client's window in (c),
# default 90; it must outlast the reschedule, the script says when it did
# not); BENCH_CONNECTIONS (wrk's, default 8).
#
# Machines: project `pvswb`, n1..n5 at 10.216.4.11-15, kept between runs
# (`down` removes them); hosts.toml, state and the client's raw output in
# bench/.swarm/ (git-ignored by its own .gitignore).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/bench/.swarm"
bin="$root/target/release/provision"
rounds="${1:-5}"
secs="${BENCH_SECONDS:-90}"
conns="${BENCH_CONNECTIONS:-8}"
project=pvswb
manager=10.216.4.11
url="http://$manager/"
mkdir -p "$work"
printf '*\n' >"$work/.gitignore"
cd "$work"
log() { printf '%s\n' "$*" >&2; }

write_hosts() {
  cat >hosts.toml <<TOML
[project]
name = "$project"
mode = "swarm"

[app]
source = "../../examples/rails_app"

[secrets.PG_PASSWORD]
generate = true

[secrets.SECRET_KEY_BASE]
generate = true

[hosts.n1]
machine = "local"
address = "10.216.4.11"
role = "manager"

[hosts.n2]
machine = "local"
address = "10.216.4.12"

[hosts.n3]
machine = "local"
address = "10.216.4.13"

[hosts.n4]
machine = "local"
address = "10.216.4.14"

[hosts.n5]
machine = "local"
address = "10.216.4.15"

[services.postgis]
host = "n2"
template = "postgis"
volumes = ["pgdata:/var/lib/postgresql/data"]
secrets = ["PG_PASSWORD"]

[services.redis]
host = "n3"
template = "redis"
volumes = ["redis-data:/data"]

[services.rails]
template = "rails"
replicas = 3
uses = ["postgis", "redis"]
secrets = ["SECRET_KEY_BASE"]
env = { RAILS_ENV = "production", RAILS_LOG_TO_STDOUT = "1" }

[services.nginx]
host = "n1"
template = "nginx"
publish = ["80"]
public = true
uses = ["rails"]
TOML
}

write_hosts
if [ "${1:-}" = down ]; then
  "$bin" --hosts hosts.toml down --volumes || true
  exit 0
fi
case "$rounds" in '' | *[!0-9]*) log "usage: bench/swarm.sh [ROUNDS] | down"; exit 2 ;; esac
client="${BENCH_CLIENT:-}"
if [ -z "$client" ]; then
  if command -v wrk >/dev/null; then client=wrk; else client=curl; fi
fi
case "$client" in
  wrk) command -v wrk >/dev/null || { log "wrk is missing: apt-get install wrk"; exit 1; } ;;
  curl) ;;
  *) log "BENCH_CLIENT is wrk or curl, not $client"; exit 2 ;;
esac
(cd "$root" && cargo build --release --quiet)

ssh_opts=(-i .provision/id_ed25519 -o UserKnownHostsFile=.provision/known_hosts
  -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes
  -o BatchMode=yes -o ConnectTimeout=10 -o ControlMaster=no -o ControlPath=none
  -o LogLevel=ERROR)
# shellcheck disable=SC2029 # the script is meant to expand here (its service name)
on_manager() { ssh "${ssh_opts[@]}" "root@$manager" "$@"; }
now() { printf '%s\n' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# The hosts.toml names of the nodes running a Rails task (state running, on
# a ready node), one a line: node IDs mapped to their provision.host label
# (a node that rejoined has a new ID under the same hostname).
# shellcheck disable=SC2016 # expanded on the manager
rails_nodes_sh='docker node inspect --format "N {{.ID}} {{.Status.State}} {{index .Spec.Labels \"provision.host\"}}" $(docker node ls -q)
ids=$(docker service ps -q --no-trunc --filter desired-state=running '"${project}_rails"')
[ -z "$ids" ] || docker inspect --type task --format "T {{.NodeID}} {{.Status.State}}" $ids'
rails_nodes() {
  on_manager "$rails_nodes_sh" |
    awk '$1 == "N" { state[$2] = $3; name[$2] = $4 }
         $1 == "T" && $3 == "running" && state[$2] == "ready" { print name[$2] }'
}

# --- (a) cold stand-up ---------------------------------------------------
machines_s=- standup_s=-
if [ "${BENCH_COLD:-1}" != 0 ]; then
  log "(a) cold stand-up: removing the bench machines, then from nothing"
  "$bin" --hosts hosts.toml down --volumes >/dev/null 2>&1 || true
  start=$(now)
  "$bin" --hosts hosts.toml --machines-only >cold-machines.out 2>&1 || { cat cold-machines.out >&2; log "--machines-only failed"; exit 1; }
  machines_s=$(since "$start")
  start=$(now)
  "$bin" --hosts hosts.toml >cold.out 2>&1 || { tail -40 cold.out >&2; log "the cold run failed (bench/.swarm/cold.out)"; exit 1; }
  standup_s=$(since "$start")
  log "    machines $machines_s s, stack on blank machines $standup_s s"
else
  log "machines and a converge (BENCH_COLD=0; quick when already done)"
  "$bin" --hosts hosts.toml >converge.out 2>&1 || { tail -40 converge.out >&2; log "the converge failed"; exit 1; }
fi
deadline=$((SECONDS + 180))
until curl -fsS -o /dev/null --max-time 5 "$url"; do
  [ "$SECONDS" -lt "$deadline" ] || { log "the page at $url never answered"; exit 1; }
  sleep 1
done

# --- (b) no-op rerun against one fresh ssh -------------------------------
run_noop() {
  local out
  out=$("$bin" --hosts hosts.toml 2>&1) || { printf '%s\n' "$out" >&2; log "the rerun failed"; return 1; }
  grep -q "Nothing changed" <<<"$out" || { printf '%s\n' "$out" >&2; log "the rerun is not a no-op"; return 1; }
}
run_ssh_true() { on_manager true; }
run_noop >/dev/null # the rerun before the rounds must be a no-op too
noop=() sshs=()
log "(b) $rounds interleaved rounds: no-op rerun, fresh ssh true to n1"
for ((r = 0; r < rounds; r++)); do
  if ((r % 2)); then arms=(ssh noop); else arms=(noop ssh); fi
  for arm in "${arms[@]}"; do
    start=$(now)
    case $arm in
      noop) run_noop; noop+=("$(since "$start")") ;;
      ssh) run_ssh_true; sshs+=("$(since "$start")") ;;
    esac
  done
done
noop_med=$(median "${noop[@]}")
ssh_med=$(median "${sshs[@]}")
ratio=$(awk -v a="$noop_med" -v b="$ssh_med" 'BEGIN { printf "%.2f", a / b }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.5) ? "ok" : "MISSED" }')

# --- (c) the loss of a node running one Rails task ----------------------
mapfile -t before < <(rails_nodes)
log "(c) rails tasks on: ${before[*]}"
victim=
for n in n4 n5; do
  for b in "${before[@]}"; do [ "$b" = "$n" ] && victim=$n && break 2; done
done
[ -n "$victim" ] || { log "no rails task on n4 or n5 (on: ${before[*]}); stopping another node would stop a pinned service"; exit 1; }

client_out="loss-$client.txt"
case $client in
  wrk)
    wrk -t2 -c"$conns" -d"${secs}s" "$url" >"$client_out" 2>&1 &
    ;;
  curl)
    # One connection per request; a line per request: its HTTP status
    # (000 when none came back).
    (
      end=$((SECONDS + secs))
      while [ "$SECONDS" -lt "$end" ]; do
        curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "$url" || true
      done
    ) >"$client_out" 2>/dev/null &
    ;;
esac
load=$!
sleep 2 # the client's first requests, before the loss
log "    docker stop $project-$victim"
lost=$(now)
docker stop "$project-$victim" >/dev/null
moved_s=''
nodes=()
limit=$((SECONDS + 180))
while [ "$SECONDS" -lt "$limit" ]; do
  mapfile -t nodes < <(rails_nodes || true)
  up=0
  for n in "${nodes[@]}"; do [ "$n" = "$victim" ] || up=$((up + 1)); done
  if [ "$up" -ge 3 ]; then
    moved_s=$(since "$lost")
    break
  fi
  sleep 0.5
done
[ -n "$moved_s" ] || log "rails never ran 3 tasks again within 180 s of the loss"
log "    rails back to 3 tasks after ${moved_s:-never} s, on: ${nodes[*]}"
loss_window=$(since "$lost")
wait "$load" || true
if awk -v t="$loss_window" -v s="$secs" 'BEGIN { exit !(t + 2 > s) }'; then
  log "warning: the reschedule ($loss_window s after the loss) outlasted the client's window ($secs s): raise BENCH_SECONDS"
fi
case $client in
  wrk)
    responses=$(awk '/requests in/ { print $1 }' "$client_out")
    non2xx=$(awk -F': ' '/Non-2xx/ { print $2 }' "$client_out")
    sockerr=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$client_out")
    sent=$((${responses:-0} + ${sockerr:-0}))
    failed=$((${non2xx:-0} + ${sockerr:-0}))
    detail="responses ${responses:-0}, non-2xx ${non2xx:-0}, socket errors ${sockerr:-0}"
    ;;
  curl)
    sent=$(wc -l <"$client_out")
    failed=$(grep -vc '^2' "$client_out" || true)
    detail="one connection a request; a failure is a non-2xx status or none"
    ;;
esac

# --- back to the bench's state -------------------------------------------
log "a run to bring $victim back"
start=$(now)
back_s=$(
  if "$bin" --hosts hosts.toml >back.out 2>&1; then since "$start"; else echo "failed (bench/.swarm/back.out)"; fi
)

# --- the table -------------------------------------------------------------
printf '\nswarm mode, 5 local machines (project %s, %s)\n' "$project" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-44s %s\n' measure value
printf '%-44s %s\n' "(a) machines from nothing (--machines-only)" "$machines_s s"
printf '%-44s %s\n' "(a) cold stand-up on blank machines" "$standup_s s"
printf '%-44s %s\n' "(b) no-op rerun, median of $rounds" "$noop_med s   (runs: ${noop[*]})"
printf '%-44s %s\n' "(b) fresh ssh n1 true, median of $rounds" "$ssh_med s   (runs: ${sshs[*]})"
printf '%-44s %s\n' "(b) rerun / ssh" "${ratio}x   (target <= 1.5x: $verdict)"
printf '%-44s %s\n' "(c) node stopped" "$victim (rails tasks were on: ${before[*]})"
printf '%-44s %s\n' "(c) requests sent / failed ($client)" "$sent / $failed   ($detail; window ${secs} s; raw: bench/.swarm/$client_out)"
printf '%-44s %s\n' "(c) until 3 rails tasks run again" "${moved_s:-never (> 180)} s"
printf '%-44s %s\n' "run that brings $victim back" "$back_s s"
