#!/usr/bin/env bash
# provision vs Ansible vs pyinfra vs a plain shell script, on the same two
# local machines, for the same converged work (Docker answers; one templated
# image built; one container with a named volume and a published port, on
# each host). Times NO-OP reruns: N interleaved rounds, each tool in turn
# (the order rotates every round), and prints medians and ratios. provision
# runs four times per round: as root, as `ops` (a sudo user on the same
# hosts: its Docker API relay is socat), as `opsc` (the same, but sudo's
# PATH has no socat: the relay is the docker CLI's) and as `opsd` (a sudo
# user in the docker group).
#
#   bench/peers.sh [ROUNDS]     # default 9 rounds
#   bench/peers.sh change       # change detection: new template value, rerun each tool
#   bench/peers.sh down         # remove the bench machines (both projects)
#
# Environment: BENCH_FULL=0 skips the full-playground figure (its first
# converge builds postgis and rails: a few minutes).
#
# Machines: project `pvbench` (10.215.1.10/11: m1, m2; peers/hosts.toml) and
# `pvfull` (10.215.2.10/11: the shipped playground renamed; peers/full.toml).
# They are kept between runs so a rerun measures at once; `down` removes
# them. Ansible (ansible-core + the `ansible` package's community.docker) and
# pyinfra come from PyPI into bench/.venv (git-ignored).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/bench/peers"

bin="$root/target/release/provision"
venv="$root/bench/.venv"
key=.provision/id_ed25519
known=.provision/known_hosts
hosts=(10.215.1.10 10.215.1.11)
ssh_opts=(-i "$key" -o UserKnownHostsFile="$known" -o StrictHostKeyChecking=yes
  -o ControlMaster=no -o ControlPath=none -o BatchMode=yes)

log() { printf '%s\n' "$*" >&2; }

if [ "${1:-}" = down ]; then
  "$bin" --hosts hosts.toml down --volumes || true
  "$bin" --hosts full.toml down --volumes || true
  exit 0
fi

# --- tools ---------------------------------------------------------------
# shellcheck source=bench/tools.sh
. "$root/bench/tools.sh"
bench_tools "$root" "$venv"
export ANSIBLE_CONFIG="$PWD/ansible/ansible.cfg"
export ANSIBLE_NOCOLOR=1 PYTHONWARNINGS=ignore

run_provision() { "$bin" --hosts hosts.toml "$@"; }
# The same hosts reached as `ops`, a non-root user with passwordless sudo
# (the usual cloud login): sudo.toml is hosts.toml with `user = "ops"`; as
# `opsc`, whose sudo PATH lacks /usr/local/bin, where socat is
# (sudo-cli.toml); and as `opsd`, also in the docker group
# (sudo-docker.toml).
run_sudo() { "$bin" --hosts sudo.toml; }
run_sudo_cli() { "$bin" --hosts sudo-cli.toml; }
run_sudo_docker() { "$bin" --hosts sudo-docker.toml; }
run_full() { "$bin" --hosts full.toml; }
run_ansible() { (cd ansible && "$venv/bin/ansible-playbook" playbook.yml); }
run_ansible_docker() { (cd ansible && "$venv/bin/ansible-playbook" playbook-docker.yml); }
run_pyinfra() { (cd pyinfra && "$venv/bin/pyinfra" -y inventory.py deploy.py); }

# The yardstick: one fresh OpenSSH connection per host (in parallel), doing
# provision's checks: docker answers, the image exists, the container runs
# with the expected spec label.
yardstick_one() { # ADDRESS SERVICE
  local c="pvbench-$2"
  ssh "${ssh_opts[@]}" "root@$1" "docker info --format '{{.ServerVersion}}' >/dev/null \
    && docker image inspect \"\$(docker inspect -f '{{.Config.Image}}' $c)\" >/dev/null \
    && test \"\$(docker inspect -f '{{.State.Running}} {{index .Config.Labels \"provision.spec\"}}' $c)\" = 'true $3'"
}
specs=()
run_yardstick() {
  yardstick_one "${hosts[0]}" hello1 "${specs[0]}" &
  local a=$!
  yardstick_one "${hosts[1]}" hello2 "${specs[1]}" &
  local b=$!
  wait $a && wait $b
}
run_ssh_true() { ssh "${ssh_opts[@]}" "root@${hosts[0]}" true; }

# --- machines and a first converge ---------------------------------------
converge() { # NAME CHECK-PATTERN COMMAND...
  local name=$1 pattern=$2
  shift 2
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; log "$name failed"; exit 1; }
  if ! grep -Eq "$pattern" <<<"$out"; then
    printf '%s\n' "$out" >&2
    log "$name: its rerun is not a no-op (expected /$pattern/)"
    exit 1
  fi
}
prepare() {
  log "machines and first converges (quick when already done)"
  run_provision --machines-only >/dev/null
  run_provision >/dev/null 2>&1 || run_provision
  # community.docker's modules need python3-requests on the hosts.
  for h in "${hosts[@]}"; do
    # socat (for the sudo users' relay) in /usr/local/bin only, so that one
    # user's sudo PATH can leave it out.
    ssh "${ssh_opts[@]}" "root@$h" '{ python3 -c "import requests" 2>/dev/null && [ -x /usr/local/bin/socat ]; } ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3-requests socat >/dev/null && mv /usr/bin/socat /usr/local/bin/socat; }' &
  done
  wait
  # The sudo users: the root key authorized, sudo without a password.
  for h in "${hosts[@]}"; do
    ssh "${ssh_opts[@]}" "root@$h" 'for u in ops opsc opsd; do id $u >/dev/null 2>&1 || { useradd -m -s /bin/sh $u &&
      install -d -m 700 -o $u -g $u /home/$u/.ssh &&
      install -m 600 -o $u -g $u /root/.ssh/authorized_keys /home/$u/.ssh/authorized_keys &&
      echo "$u ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/$u && chmod 440 /etc/sudoers.d/$u; }; done
      echo "Defaults:opsc secure_path=\"/usr/sbin:/usr/bin:/sbin:/bin\"" >/etc/sudoers.d/opsc-path
      chmod 440 /etc/sudoers.d/opsc-path
      gpasswd -a opsd docker >/dev/null'
  done
  sed 's/^machine = "local"$/&\nuser = "ops"/' hosts.toml >sudo.toml
  sed 's/^machine = "local"$/&\nuser = "opsc"/' hosts.toml >sudo-cli.toml
  sed 's/^machine = "local"$/&\nuser = "opsd"/' hosts.toml >sudo-docker.toml
  run_ansible >/dev/null 2>&1
  run_ansible_docker >/dev/null 2>&1
  run_pyinfra >/dev/null 2>&1
  if [ "${BENCH_FULL:-1}" != 0 ]; then
    "$bin" --hosts full.toml --machines-only >/dev/null
    run_full >/dev/null 2>&1 || run_full
  fi
  # Every tool's rerun must change nothing.
  converge provision 'Nothing changed' run_provision
  converge provision-sudo 'Nothing changed' run_sudo
  converge provision-sudo-cli 'Nothing changed' run_sudo_cli
  converge provision-sudo-docker 'Nothing changed' run_sudo_docker
  converge ansible 'm1 +: ok=[0-9]+ +changed=0 .*' run_ansible
  converge ansible-docker 'm1 +: ok=[0-9]+ +changed=0 .*' run_ansible_docker
  converge pyinfra 'Grand total +10 +- +- +10' run_pyinfra
  [ "${BENCH_FULL:-1}" = 0 ] || converge full 'Nothing changed' run_full
  specs=(
    "$(ssh "${ssh_opts[@]}" "root@${hosts[0]}" "docker inspect -f '{{index .Config.Labels \"provision.spec\"}}' pvbench-hello1")"
    "$(ssh "${ssh_opts[@]}" "root@${hosts[1]}" "docker inspect -f '{{index .Config.Labels \"provision.spec\"}}' pvbench-hello2")"
  )
  run_yardstick
}

# --- change detection ----------------------------------------------------
on_m1() { ssh "${ssh_opts[@]}" "root@${hosts[0]}" "$@"; }
change() {
  prepare
  local new="changed $(date +%s)"
  sed "s/hello from provision/$new/" hosts.toml >changed.toml
  trap 'rm -f changed.toml' EXIT
  log "new template value: '$new'; each tool reruns once (host m1 shown)"
  check() { # TOOL CONTAINER IMAGE-REPOSITORY COMMAND...
    local tool=$1 c=$2 repo=$3
    shift 3
    local before after shown image image_has
    before=$(on_m1 "docker inspect -f '{{.Id}}' $c")
    BENCH_GREETING="$new" "$@" >/dev/null 2>&1 || log "$tool: the run failed"
    after=$(on_m1 "docker inspect -f '{{.Id}}' $c")
    shown=$(on_m1 "docker exec $c cat /greeting")
    # The newest image of the tool's repository: rebuilt or not?
    image=$(on_m1 "docker images --format '{{.Repository}}:{{.Tag}}' $repo | head -1")
    image_has=$(on_m1 "docker run --rm $image cat /greeting")
    printf '%-26s image rebuilt: %-4s container recreated: %-4s the running container has: %s\n' "$tool" \
      "$([ "$image_has" = "$new" ] && echo yes || echo NO)" \
      "$([ "$after" != "$before" ] && echo yes || echo NO)" "$shown"
  }
  check provision pvbench-hello1 pvbench-hello1 "$bin" --hosts changed.toml
  check "Ansible (command tasks)" ab-hello ab-hello run_ansible
  check "Ansible (community.docker)" abd-hello abd-hello run_ansible_docker
  check pyinfra pyi-hello pyi-hello run_pyinfra
  log "the image under the tool's tag rebuilt by hand (new content), each tool reruns once"
  rebuilt() { # TOOL CONTAINER BUILD-DIR COMMAND...
    local tool=$1 c=$2 dir=$3
    shift 3
    local before after
    before=$(on_m1 "docker inspect -f '{{.Id}}' $c")
    on_m1 "sed 's/^RUN echo .*/RUN echo rebuilt by hand > \/greeting/' $dir/Dockerfile >/tmp/Dockerfile.hand &&
      docker build -q -t \$(docker inspect -f '{{.Config.Image}}' $c) -f /tmp/Dockerfile.hand $dir >/dev/null"
    "$@" >/dev/null 2>&1 || log "$tool: the run failed"
    after=$(on_m1 "docker inspect -f '{{.Id}}' $c")
    printf '%-26s container recreated on the rebuilt image: %-4s the running container has: %s\n' "$tool" \
      "$([ "$after" != "$before" ] && echo yes || echo NO)" "$(on_m1 "docker exec $c cat /greeting")"
  }
  rebuilt "Ansible (command tasks)" ab-hello /var/lib/ansible-bench/build run_ansible
  rebuilt "Ansible (community.docker)" abd-hello /var/lib/ansible-bench/build-cd run_ansible_docker
  rebuilt pyinfra pyi-hello /var/lib/pyinfra-bench/build run_pyinfra
  log "back to the benchmark's state"
  run_provision >/dev/null 2>&1
  for c in ab-hello abd-hello pyi-hello; do
    for h in "${hosts[@]}"; do ssh "${ssh_opts[@]}" "root@$h" "docker rm -f $c >/dev/null 2>&1; docker rmi $c:latest >/dev/null 2>&1; true"; done
  done
  run_ansible >/dev/null 2>&1
  run_ansible_docker >/dev/null 2>&1
  run_pyinfra >/dev/null 2>&1
}
if [ "${1:-}" = change ]; then
  change
  exit 0
fi

# --- timing --------------------------------------------------------------
rounds=${1:-9}
prepare
tools=(provision sudo sudo_cli sudo_docker ansible ansible-docker pyinfra yardstick ssh_true)
[ "${BENCH_FULL:-1}" = 0 ] || tools+=(full)
declare -A fn=([provision]=run_provision [sudo]=run_sudo [sudo_cli]=run_sudo_cli [sudo_docker]=run_sudo_docker [ansible]=run_ansible [ansible-docker]=run_ansible_docker
  [pyinfra]=run_pyinfra [yardstick]=run_yardstick [ssh_true]=run_ssh_true [full]=run_full)
declare -A label=([provision]="provision (2 hosts, 1 service each)"
  [sudo]="provision as a sudo user (socat relay)"
  [sudo_cli]="provision as a sudo user (docker CLI relay)"
  [sudo_docker]="provision as a sudo user in group docker"
  [ansible]="Ansible (command tasks)" [ansible-docker]="Ansible (community.docker)"
  [pyinfra]="pyinfra (docker ops)" [yardstick]="shell yardstick (1 ssh per host)"
  [ssh_true]="fresh \`ssh host true\` (floor)" [full]="provision, full playground")
times=$(mktemp)
trap 'rm -f "$times"' EXIT
n=${#tools[@]}
log "timing $rounds interleaved rounds of ${tools[*]}"
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < n; i++)); do
    t=${tools[$(((i + r) % n))]}
    start=$EPOCHREALTIME
    "${fn[$t]}" >/dev/null 2>&1 || { log "$t failed in round $r"; exit 1; }
    end=$EPOCHREALTIME
    echo "$t $start $end" >>"$times"
  done
done

python3 - "$times" "$rounds" <<EOF
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    t, a, b = line.split()
    runs.setdefault(t, []).append(float(b) - float(a))
label = {$(for t in "${tools[@]}"; do printf '"%s": "%s", ' "$t" "${label[$t]}"; done)}
med = {t: statistics.median(v) for t, v in runs.items()}
p = med["provision"]
print(f"no-op reruns, median of {sys.argv[2]} interleaved rounds")
print(f"{'tool':<44} {'median':>8} {'min':>7} {'max':>7} {'vs provision':>13}")
for t in label:
    v = runs[t]
    print(f"{label[t]:<44} {med[t]:>7.3f}s {min(v):>6.3f}s {max(v):>6.3f}s {med[t] / p:>12.2f}x")
print()
def check(name, ok, detail):
    print(f"  [{'ok' if ok else 'MISSED'}] {name}: {detail}")
print("targets:")
check("provision >= 20x faster than Ansible", med["ansible"] / p >= 20, f"{med['ansible'] / p:.1f}x")
check("provision >= 6x faster than pyinfra", med["pyinfra"] / p >= 6, f"{med['pyinfra'] / p:.1f}x")
check("the sudo user's no-op <= 1.3x root's (socat relay)", med["sudo"] / p <= 1.3, f"{med['sudo'] / p:.2f}x")
check("the sudo user's no-op <= 1.3x root's (docker CLI relay)", med["sudo_cli"] / p <= 1.3,
      f"{med['sudo_cli'] / p:.2f}x")
check("a sudo user in group docker: no-op <= 1.3x root's", med["sudo_docker"] / p <= 1.3,
      f"{med['sudo_docker'] / p:.2f}x")
check("provision <= 0.5x the shell yardstick", p / med["yardstick"] <= 0.5, f"{p / med['yardstick']:.2f}x")
if "full" in med:
    check("full playground <= 1.0x one fresh ssh", med["full"] / med["ssh_true"] <= 1.0,
          f"{med['full'] / med['ssh_true']:.2f}x")
EOF
