#!/usr/bin/env bash
# How a no-op run grows with the number of hosts (issue 15, "Many hosts"):
# N = 2, 5 and 10 local machines with no init system (light ones), each with
# the peers' benchmark work (bench/peers: one templated image, one container
# with a named volume and a published port). Per N, ROUNDS interleaved
# rounds (the order rotates every round) of:
#   - provision's no-op rerun (and its peak RSS, GNU time's %M);
#   - Ansible's (command tasks, bench/peers/ansible/playbook.yml) and
#     pyinfra's (bench/peers/pyinfra/deploy.py) no-op reruns, as
#     bench/peers.sh sets them up, on the same N machines;
#   - N fresh `ssh host true` (OpenSSH, no connection sharing) in parallel,
#     and one alone.
# Then the dry-run plan of a 50-host file (nothing contacted): time and RSS.
#
#   bench/scale.sh [ROUNDS]     # default 5
#   bench/scale.sh down         # remove the bench machines
#
# Environment: SCALE_NS (default "2 5 10").
# Machines: project pvscN (N = 2, 5, 10) on 10.215.(20+N).0/24, kept between
# runs (`down` removes them); generated files in bench/.scale/ (git-ignored
# by its own .gitignore); Ansible and pyinfra in bench/.venv, as peers.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$root/bench/peers"
work="$root/bench/.scale"
bin="$root/target/release/provision"
venv="$root/bench/.venv"
rounds="${1:-5}"
ns="${SCALE_NS:-2 5 10}"
mkdir -p "$work"
printf '*\n' >"$work/.gitignore"
log() { printf '%s\n' "$*" >&2; }

# One folder per N: hosts.toml, the Ansible and pyinfra copies with an
# inventory of the N machines (their key and known_hosts are provision's).
setup() { # N
  local n=$1 d="$work/n$1" i
  mkdir -p "$d"
  ln -sfn "$peers/bench-template" "$d/bench-template"
  {
    printf '# bench/scale.sh: %s light machines, the peers'"'"' work on each\n' "$n"
    printf '[project]\nname = "pvsc%s"\n' "$n"
    for ((i = 1; i <= n; i++)); do
      printf '\n[hosts.m%s]\nmachine = "local"\ninit = "none"\naddress = "10.215.%s.%s"\n' \
        "$i" "$((20 + n))" "$((10 + i))"
    done
    for ((i = 1; i <= n; i++)); do
      printf '\n[services.hello%s]\nhost = "m%s"\ntemplate = "./bench-template"\n' "$i" "$i"
      printf 'vars = { greeting = "hello from provision" }\npublish = ["18081:8080"]\npublic = true\n'
      printf 'volumes = ["hello%s-data:/data"]\n' "$i"
    done
  } >"$d/hosts.toml"
  rm -rf "$d/ansible" "$d/pyinfra"
  cp -r "$peers/ansible" "$peers/pyinfra" "$d/"
  {
    printf '[bench]\n'
    for ((i = 1; i <= n; i++)); do
      printf 'm%s ansible_host=10.215.%s.%s\n' "$i" "$((20 + n))" "$((10 + i))"
    done
    printf '\n[bench:vars]\nansible_user=root\nansible_ssh_private_key_file=../.provision/id_ed25519\n'
  } >"$d/ansible/inventory.ini"
  # Its own control sockets: a round must not reuse another N's.
  sed -i "s|control_path_dir = .*|control_path_dir = /tmp/pvscale-ansible-cp-$n|" "$d/ansible/ansible.cfg"
  {
    printf '_key = "../.provision/id_ed25519"\n_known = "../.provision/known_hosts"\nbench = [\n'
    printf '    (name, {"ssh_hostname": addr, "ssh_user": "root", "ssh_key": _key,\n'
    printf '            "ssh_known_hosts_file": _known, "ssh_strict_host_key_checking": "yes"})\n'
    printf '    for name, addr in (\n'
    for ((i = 1; i <= n; i++)); do
      printf '        ("m%s", "10.215.%s.%s"),\n' "$i" "$((20 + n))" "$((10 + i))"
    done
    printf '    )\n]\n'
  } >"$d/pyinfra/inventory.py"
}

if [ "${1:-}" = down ]; then
  for n in $ns; do
    if [ -f "$work/n$n/hosts.toml" ]; then
      (cd "$work/n$n" && "$bin" --hosts hosts.toml down --volumes) || true
    fi
  done
  exit 0
fi

# shellcheck source=bench/tools.sh
. "$root/bench/tools.sh"
bench_tools "$root" "$venv"
export ANSIBLE_NOCOLOR=1 PYTHONWARNINGS=ignore

times="$work/times.txt"
: >"$times"
for n in $ns; do
  setup "$n"
  d="$work/n$n"
  cd "$d"
  addrs=()
  for ((i = 1; i <= n; i++)); do addrs+=("10.215.$((20 + n)).$((10 + i))"); done
  ssh_opts=(-i .provision/id_ed25519 -o UserKnownHostsFile=.provision/known_hosts
    -o StrictHostKeyChecking=yes -o ControlMaster=no -o ControlPath=none -o BatchMode=yes)
  run_provision() { "$bin" --hosts hosts.toml; }
  run_ansible() { (cd ansible && ANSIBLE_CONFIG="$PWD/ansible.cfg" "$venv/bin/ansible-playbook" playbook.yml); }
  run_pyinfra() { (cd pyinfra && "$venv/bin/pyinfra" -y inventory.py deploy.py); }
  run_ssh_all() {
    local pids=() a
    for a in "${addrs[@]}"; do
      ssh "${ssh_opts[@]}" "root@$a" true &
      pids+=($!)
    done
    for a in "${pids[@]}"; do wait "$a"; done
  }
  run_ssh_one() { ssh "${ssh_opts[@]}" "root@${addrs[0]}" true; }

  log "N=$n: machines and first converges (quick when already done)"
  "$bin" --hosts hosts.toml --machines-only >/dev/null
  run_provision >/dev/null 2>&1 || run_provision
  run_ansible >/dev/null 2>&1 || { run_ansible; exit 1; }
  run_pyinfra >/dev/null 2>&1 || { run_pyinfra; exit 1; }
  # Every tool's rerun must change nothing.
  out=$(run_provision 2>&1)
  grep -q 'Nothing changed' <<<"$out" || { printf '%s\n' "$out"; log "provision: not a no-op"; exit 1; }
  out=$(run_ansible 2>&1)
  if grep -Eq 'changed=[1-9]' <<<"$out"; then printf '%s\n' "$out"; log "ansible: not a no-op"; exit 1; fi
  out=$(run_pyinfra 2>&1)
  if grep -Eq 'Changed: *[1-9]|Success: *[1-9]' <<<"$out"; then
    printf '%s\n' "$out" | tail -20
    log "pyinfra: its rerun changed something"
  fi

  tools=(provision ansible pyinfra ssh_all ssh_one)
  declare -A fn=([provision]=run_provision [ansible]=run_ansible [pyinfra]=run_pyinfra
    [ssh_all]=run_ssh_all [ssh_one]=run_ssh_one)
  k=${#tools[@]}
  log "N=$n: $rounds interleaved rounds of ${tools[*]}"
  for ((r = 0; r < rounds; r++)); do
    for ((i = 0; i < k; i++)); do
      t=${tools[$(((i + r) % k))]}
      rss=-
      start=$EPOCHREALTIME
      if [ "$t" = provision ]; then
        rss=$(/usr/bin/time -f '%M' "$bin" --hosts hosts.toml 2>&1 >/dev/null | tail -1)
      else
        "${fn[$t]}" >/dev/null 2>&1 || { log "$t failed in round $r"; exit 1; }
      fi
      end=$EPOCHREALTIME
      echo "$n $t $start $end $rss" >>"$times"
    done
  done
  cd "$root"
done

# The dry-run plan of 50 hosts (documentation addresses: nothing contacted).
big="$work/big"
mkdir -p "$big"
ln -sfn "$peers/bench-template" "$big/bench-template"
{
  printf '[project]\nname = "pvsc50"\n'
  for ((i = 1; i <= 50; i++)); do
    printf '\n[hosts.h%s]\naddress = "198.51.100.%s"\n' "$i" "$i"
  done
  for ((i = 1; i <= 50; i++)); do
    printf '\n[services.hello%s]\nhost = "h%s"\ntemplate = "./bench-template"\n' "$i" "$i"
    printf 'publish = ["18081:8080"]\nvolumes = ["hello%s-data:/data"]\n' "$i"
  done
} >"$big/hosts.toml"
for ((r = 0; r < rounds; r++)); do
  start=$EPOCHREALTIME
  rss=$(cd "$big" && /usr/bin/time -f '%M' "$bin" --hosts hosts.toml --dry-run 2>&1 >/dev/null | tail -1)
  end=$EPOCHREALTIME
  echo "50 dry_run $start $end $rss" >>"$times"
done

python3 - "$times" "$rounds" <<'EOF'
import statistics, sys
runs, rss = {}, {}
for line in open(sys.argv[1]):
    n, t, a, b, m = line.split()
    runs.setdefault((int(n), t), []).append(float(b) - float(a))
    if m != "-":
        rss.setdefault((int(n), t), []).append(int(m) / 1024)
med = {k: statistics.median(v) for k, v in runs.items()}
ns = sorted({n for n, t in runs if t != "dry_run"})
print(f"no-op reruns, medians of {sys.argv[2]} interleaved rounds per N (seconds)")
print(f"{'N':>3} {'provision':>10} {'Ansible':>8} {'pyinfra':>8} {'N x ssh':>8} {'1 ssh':>6} "
      f"{'prov/Nssh':>9} {'Ansible/prov':>12} {'pyinfra/prov':>12} {'peak RSS':>9}")
for n in ns:
    p, a, y, s, o = (med[(n, t)] for t in ("provision", "ansible", "pyinfra", "ssh_all", "ssh_one"))
    print(f"{n:>3} {p:>10.3f} {a:>8.3f} {y:>8.3f} {s:>8.3f} {o:>6.3f} {p / s:>8.2f}x {a / p:>11.1f}x "
          f"{y / p:>11.1f}x {max(rss[(n, 'provision')]):>6.1f} MB")
if (50, "dry_run") in med:
    print(f"dry-run plan of 50 hosts: {med[(50, 'dry_run')]:.3f} s, peak RSS {max(rss[(50, 'dry_run')]):.1f} MB")
if 10 in ns:
    p, a, y, s = (med[(10, t)] for t in ("provision", "ansible", "pyinfra", "ssh_all"))
    def check(name, ok, detail):
        print(f"  [{'ok' if ok else 'MISSED'}] {name}: {detail}")
    print("targets at N=10:")
    check("no-op <= 1.0x ten parallel fresh ssh", p / s <= 1.0, f"{p / s:.2f}x")
    check(">= 30x faster than Ansible", a / p >= 30, f"{a / p:.1f}x")
    check(">= 10x faster than pyinfra", y / p >= 10, f"{y / p:.1f}x")
    check("peak RSS < 60 MB", max(rss[(10, "provision")]) < 60, f"{max(rss[(10, 'provision')]):.1f} MB")
EOF
