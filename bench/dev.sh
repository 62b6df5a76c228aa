#!/usr/bin/env bash
# Dev mode's edit-to-visible latency against a yardstick, side by side in
# one run (issue 13). Each round edits the page's heading in the app folder
# and times until the page through Nginx shows it:
#   - provision: `provision dev` running (its watcher and sync);
#   - yardstick: `rsync -e ssh` of the same file straight into the dev
#     container's root (its overlay's merged folder on the host), then the
#     same check. One fresh OpenSSH connection per edit, as a hand loop has.
#     Not `-t`: a kept mtime in the same second as the last change is not
#     newer to Rails' file watcher, and the page would never change.
# Arms alternate edit by edit; medians and p95 over N edits each.
#
#   bench/dev.sh [EDITS]     # default 20 edits of each arm
#
# Uses bench/rollout.sh's machines (project pvrollb: web 10.215.4.10,
# db 10.215.4.11) and its app copy in bench/.rollout/; needs rsync here and
# on web (installed there when missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/bench/.rollout"
bin="$root/target/release/provision"
edits="${1:-20}"
url=http://10.215.4.10/
log() { printf '%s\n' "$*" >&2; }
[ -f "$work/hosts.toml" ] || { log "run bench/rollout.sh first (it makes the machines)"; exit 1; }
command -v rsync >/dev/null || { log "rsync is missing: apt-get install rsync"; exit 1; }
cd "$work"
sed -i 's/^replace = .*/replace = "start-first"/' hosts.toml
ssh_opts=(-i .provision/id_ed25519 -o UserKnownHostsFile=.provision/known_hosts
  -o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlMaster=no -o ControlPath=none)
on_web() { ssh "${ssh_opts[@]}" root@10.215.4.10 "$@"; }
on_web 'command -v rsync >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }'
"$bin" --hosts hosts.toml >/dev/null 2>&1 || "$bin" --hosts hosts.toml
file=app/controllers/visits_controller.rb
cp app/$file "$work/.heading.orig"

"$bin" --hosts hosts.toml dev >"$work/dev.out" 2>"$work/dev.err" &
dev=$!
trap 'kill -INT $dev 2>/dev/null; wait $dev 2>/dev/null; cp "$work/.heading.orig" "$work/app/$file"' EXIT
until grep -q "dev mode: " "$work/dev.out"; do
  kill -0 $dev 2>/dev/null || { cat "$work/dev.err"; exit 1; }
  sleep 0.2
done
merged=$(on_web "docker inspect -f '{{.GraphDriver.Data.MergedDir}}' pvrollb-rails")

now_ms() { date +%s%3N; }
visible() { # TEXT: poll the page until it shows TEXT (deadline 30 s)
  local deadline=$(( $(now_ms) + 30000 ))
  until curl -fsS "$url" 2>/dev/null | grep -q "$1"; do
    [ "$(now_ms)" -lt "$deadline" ] || { log "never showed: $1"; return 1; }
  done
}
# The yardstick edits a copy outside the app folder, so dev mode's watcher
# never sees (and races) its edits.
mkdir -p .yard
heading() { sed -i "s|<h1>.*</h1>|<h1>$1</h1>|" "$2"; }
p=(); y=()
for i in $(seq 1 "$edits"); do
  for arm in provision yardstick; do
    text="edit $arm $i $RANDOM"
    if [ $arm = yardstick ]; then cp "app/$file" .yard/edited.rb; fi
    t0=$(now_ms)
    if [ $arm = provision ]; then
      heading "$text" "app/$file"
    else
      heading "$text" .yard/edited.rb
      rsync -e "ssh ${ssh_opts[*]}" -I .yard/edited.rb "root@10.215.4.10:$merged/app/$file"
    fi
    visible "$text"
    ms=$(( $(now_ms) - t0 ))
    if [ $arm = provision ]; then p+=("$ms"); else y+=("$ms"); fi
  done
done
stats() { # NAME VALUES...
  local name=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v n="$name" '{v[NR]=$1} END {
    m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2;
    i = int(0.95 * NR + 0.999); if (i > NR) i = NR;
    printf "%-10s edits %3d  median %6.0f ms  p95 %6.0f ms\n", n, NR, m, v[i] }'
}
printf '\nedit to page through Nginx, %s edits each, interleaved\n' "$edits"
stats provision "${p[@]}"
stats yardstick "${y[@]}"
