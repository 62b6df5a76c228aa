#!/usr/bin/env bash
# From cold: provision against a plain shell yardstick doing the same work
# on the same blank machines (issue 15), interleaved, and each host alone.
#
#   bench/cold.sh [ROUNDS]    # default 3 rounds
#   bench/cold.sh down        # remove the bench machines
#
# Work: web (redis, rails, nginx) and db (PostGIS) of the playground, two
# blank local machines (systemd, no Docker) made fresh before every arm.
# - provision: `provision --hosts hosts.toml` with PROVISION_TIMING=1 (its
#   critical path is in bench/.cold/provision-ROUND.log).
# - yardstick: per host one OpenSSH connection (`provision ssh HOST`: the
#   same address, key and known_hosts) that receives a tar of the host's
#   script (bench/cold/web.sh, db.sh), the install script provision runs,
#   the base image (`docker save`, timed) and the files provision rendered
#   (build contexts, env files, firewall, captured from provision's first
#   round), and runs the script: the same installs, builds and runs in
#   provision's order, the hosts in parallel; web starts rails once PostGIS
#   on db answers.
# - one-at-a-time: provision with PROVISION_BUILDS=1 (a host's builds one
#   after the other, as before they ran side by side), two hosts.
# - alone: after a provision arm, one host's machine is replaced by a
#   blank one and `provision --only HOST` converges it while the other
#   host stays up (web first, then db).
# Every arm starts after its machines exist (their creation is not timed)
# and ends when its last container runs; the page through Nginx is checked
# after each two-host arm, untimed.
#
# Machines: project `pvcold`, web 10.212.4.10, db 10.212.4.11, one CPU each
# (`cpus = 1`: two VMs do not share their cores, and on this two-core
# computer, without it, one host alone gets both); the app is a
# copy of examples/rails_app in bench/.cold/ (git-ignored, 0700).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/bench/.cold"
bin="$root/target/release/provision"
rounds="${1:-3}"
web=10.212.4.10
db=10.212.4.11
mkdir -p "$work"
chmod 0700 "$work"
cd "$work"
log() { printf '%s\n' "$*" >&2; }

cat >hosts.toml <<TOML
[project]
name = "pvcold"

[app]
source = "app"

[secrets.PG_PASSWORD]
generate = true

[secrets.SECRET_KEY_BASE]
generate = true

[hosts.web]
machine = "local"
address = "$web"
cpus = 1

[hosts.db]
machine = "local"
address = "$db"
cpus = 1

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

[services.nginx]
host = "web"
template = "nginx"
publish = ["80"]
public = true
uses = ["rails"]
TOML

if [ "${1:-}" = down ]; then
  "$bin" --hosts hosts.toml down --volumes || true
  exit 0
fi
(cd "$root" && cargo build --release --quiet --bin provision)
[ -d app ] || cp -r "$root/examples/rails_app" app

blank() { # HOST...: the machine gone with its Docker data, then made again
  local h
  for h; do
    docker rm --force "pvcold-$h" >/dev/null 2>&1 || true
    docker volume rm "pvcold-$h-docker" >/dev/null 2>&1 || true
  done
  "$bin" --hosts hosts.toml --machines-only >machines.log 2>&1 || { cat machines.log >&2; exit 1; }
}

now() { printf '%s\n' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

served() { # the page through Nginx, within 60 s
  for _ in $(seq 120); do
    curl -fsS --max-time 2 "http://$web/" 2>/dev/null | grep -q '<h1>' && return 0
    sleep 0.5
  done
  log "no page at http://$web/ after 60 s"
  exit 1
}

provision_run() { # LOG ARGS...: the run's wall time on stdout
  local out=$1 t
  shift
  t=$(now)
  PROVISION_TIMING=1 "$bin" --hosts hosts.toml "$@" >"$out" 2>&1 || {
    tail -n 30 "$out" >&2
    log "provision $* failed: see $work/$out"
    exit 1
  }
  since "$t"
}

capture() { # the files provision rendered on each host, for the yardstick
  local h
  for h in web db; do
    rm -rf "yard-$h" && mkdir -p "yard-$h/files"
    # shellcheck disable=SC2016 # expanded on the host
    "$bin" --hosts hosts.toml ssh "$h" -- sh -c \
      'cd /var/lib/provision/pvcold && tar -c $(ls -d build env firewall live secrets 2>/dev/null)' |
      tar -C "yard-$h/files" -x
    cp "$root/src/scripts/install-docker.sh" "$root/bench/cold/$h.sh" "yard-$h/"
  done
}

yardstick_run() { # the wall time on stdout
  local t h pids=() failed=0
  t=$(now)
  for h in web db; do
    (
      docker save -o "yard-$h/base.tar" debian:bookworm
      tar -C "yard-$h" -c . |
        "$bin" --hosts hosts.toml ssh "$h" -- sh -c \
          "rm -rf /root/yard && mkdir -p /root/yard && tar -C /root/yard -x && bash /root/yard/$h.sh"
    ) >"yardstick-$h.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  [ "$failed" = 0 ] || { tail -n 20 yardstick-*.log >&2; log "the yardstick failed"; exit 1; }
  since "$t"
}

captured=
rows=()
P=() Y=() S=() W=() D=()
arm() { # provision|yardstick|serial ROUND
  local s
  blank web db
  if [ "$1" = provision ]; then
    s=$(provision_run "provision-$2.log")
    served
    P+=("$s")
    [ -n "$captured" ] || { capture; captured=yes; }
    blank web
    local w
    w=$(provision_run "alone-web-$2.log" --only web)
    served
    blank db
    local d
    d=$(provision_run "alone-db-$2.log" --only db)
    W+=("$w") D+=("$d")
    rows+=("$(printf '%5s  %-13s %8s %8s %8s' "$2" provision "$s" "$w" "$d")")
  elif [ "$1" = serial ]; then
    s=$(PROVISION_BUILDS=1 provision_run "serial-$2.log")
    served
    S+=("$s")
    rows+=("$(printf '%5s  %-13s %8s' "$2" one-at-a-time "$s")")
  else
    s=$(yardstick_run)
    served
    Y+=("$s")
    rows+=("$(printf '%5s  %-13s %8s' "$2" yardstick "$s")")
  fi
  log "${rows[-1]}"
}

arms=(provision yardstick serial)
for n in $(seq 1 "$rounds"); do
  for k in 0 1 2; do arm "${arms[(n - 1 + k) % 3]}" "$n"; done
done

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
mp=$(median "${P[@]}") my=$(median "${Y[@]}") ms=$(median "${S[@]}") mw=$(median "${W[@]}") md=$(median "${D[@]}")
printf '\nseconds, from blank machines (Docker not installed) to the last container\n'
printf '%5s  %-13s %8s %8s %8s\n' round arm two-host web-alone db-alone
printf '%s\n' "${rows[@]}"
printf '\nmedians: provision %s s, yardstick %s s: %s (target <= 1.0x)\n' "$mp" "$my" \
  "$(awk -v a="$mp" -v b="$my" 'BEGIN { printf "%.2fx", a / b }')"
printf 'builds side by side / one at a time: %s s / %s s: %s\n' "$mp" "$ms" \
  "$(awk -v a="$mp" -v b="$ms" 'BEGIN { printf "%.2fx", a / b }')"
slow=$(awk -v a="$mw" -v b="$md" 'BEGIN { print (a > b) ? a : b }')
printf 'two-host wall / slowest host alone (web %s s, db %s s): %s (target <= 1.1x)\n' "$mw" "$md" \
  "$(awk -v a="$mp" -v b="$slow" 'BEGIN { printf "%.2fx", a / b }')"
