#!/usr/bin/env bash
# Builds on one host (issue 15, "From cold"): the web host's three images
# (redis, nginx, rails, all apt-heavy) built from blank, four ways, on the
# local engine (the docker.io the playground machines run):
#   - classic-serial:   the classic builder, one after the other (provision today);
#   - classic-parallel: the classic builder, all three at once;
#   - buildkit-serial:  BuildKit, with cache mounts for apt's lists and
#                       archives shared by the three (`sharing=locked`);
#   - buildkit-parallel: the same, all three at once.
# "From blank": no layer cache (`--no-cache`, `docker builder prune`), an
# empty apt cache, the base image present (provision ships it first). ROUNDS
# interleaved rounds, the order rotating; prints medians.
#
#   bench/builds.sh [ROUNDS]     # default 2
#
# Environment: DOCKER, the docker CLI (default /usr/bin/docker).
#
# Contexts are rendered into bench/.builds (git-ignored) from templates/ with
# the templates' defaults. Needs the local Docker engine, debian:bookworm, and
# Debian's mirrors (apt downloads are part of what is timed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/bench/.builds"
rounds="${1:-2}"
images=(redis nginx rails)
# Debian's docker.io CLI, as on the playground machines (a newer CLI without
# buildx cannot use the engine's BuildKit).
docker=${DOCKER:-/usr/bin/docker}
[ -x "$docker" ] || docker=docker
log() { printf '%s\n' "$*" >&2; }

"$docker" image inspect debian:bookworm >/dev/null 2>&1 ||
  { log "debian:bookworm is missing: run ./provision --machines-only once (it builds it)"; exit 1; }

# One context per image and builder: the template with its defaults; the
# BuildKit copy keeps apt's lists and archives in cache mounts instead.
render() { # IMAGE KIND
  local d="$work/$2/$1"
  rm -rf "$d"
  mkdir -p "$d"
  cp -r "$root/templates/$1/." "$d/"
  rm -f "$d/template.toml"
  [ "$1" != rails ] || cp -r "$root/examples/rails_app" "$d/app"
  # The templates' defaults (template.toml) and a name for the rest.
  find "$d" -path "$d/app" -prune -o -type f -print0 | xargs -0 sed -i \
    -e 's/{{ base_image }}/debian:bookworm/' -e 's/{{ rails_env }}/production/' \
    -e 's/{{ puma_threads }}/5/' -e 's/{{ puma_workers }}/2/' \
    -e 's/{{ worker_connections }}/1024/' -e 's/{{ client_max_body_size }}/10m/' \
    -e 's/{{ server_name }}/_/' -e 's/{{ uses.rails.url_host }}/127.0.0.1/' \
    -e 's/{{ uses.rails.port }}/3000/' -e 's/{{ maxmemory }}/128mb/' \
    -e 's/{{ service.name }}/bench/' -e 's/{{ host.name }}/bench/'
  if grep -rq '{[{%]' "$d" --exclude-dir=app; then
    log "$1: a template value the bench does not set: $(grep -rn '{[{%]' "$d" --exclude-dir=app | head -3)"
    exit 1
  fi
  if [ "$2" = buildkit ]; then
    sed -i -e 's|^RUN apt-get update|RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt/lists,sharing=locked rm -f /etc/apt/apt.conf.d/docker-clean \&\& apt-get update|' \
      -e 's| /var/lib/apt/lists/\*||' "$d/Dockerfile"
    grep -q 'mount=type=cache' "$d/Dockerfile" || { log "$1: no apt line to cache"; exit 1; }
  fi
}
for i in "${images[@]}"; do render "$i" classic; render "$i" buildkit; done

build_one() { # KIND IMAGE
  if [ "$1" = classic ]; then
    DOCKER_BUILDKIT=0 "$docker" build -q --no-cache -t "pvbuilds-$2" "$work/classic/$2" >/dev/null
  else
    DOCKER_BUILDKIT=1 "$docker" build -q --no-cache -t "pvbuilds-$2" "$work/buildkit/$2" >/dev/null
  fi
}
blank() {
  for i in "${images[@]}"; do "$docker" rmi -f "pvbuilds-$i" >/dev/null 2>&1 || true; done
  "$docker" builder prune -af >/dev/null 2>&1 || true
}
run_variant() { # NAME
  local kind=${1%-*} how=${1#*-} i pids=()
  if [ "$how" = serial ]; then
    for i in "${images[@]}"; do build_one "$kind" "$i"; done
  else
    for i in "${images[@]}"; do build_one "$kind" "$i" & pids+=($!); done
    for i in "${pids[@]}"; do wait "$i"; done
  fi
}

variants=(classic-serial classic-parallel buildkit-serial buildkit-parallel)
times=$(mktemp)
trap 'rm -f "$times"' EXIT
n=${#variants[@]}
log "timing $rounds interleaved rounds of ${variants[*]}"
for ((r = 0; r < rounds; r++)); do
  for ((k = 0; k < n; k++)); do
    v=${variants[$(((k + r) % n))]}
    blank
    start=$EPOCHREALTIME
    run_variant "$v" || { log "$v failed in round $r"; exit 1; }
    end=$EPOCHREALTIME
    echo "$v $start $end" >>"$times"
    log "  round $r $v: $(python3 -c "print(f'{$end - $start:.1f} s')")"
  done
done
blank

python3 - "$times" "$rounds" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    v, a, b = line.split()
    runs.setdefault(v, []).append(float(b) - float(a))
base = statistics.median(runs["classic-serial"])
print(f"three images from blank, median of {sys.argv[2]} interleaved rounds")
print(f"{'way':<20} {'median':>8} {'min':>7} {'max':>7} {'vs classic-serial':>18}")
for v, t in runs.items():
    m = statistics.median(t)
    print(f"{v:<20} {m:>7.1f}s {min(t):>6.1f}s {max(t):>6.1f}s {m / base:>17.2f}x")
EOF
