#!/usr/bin/env bash
# Benchmark: provision's SSH transport vs OpenSSH, side by side in one run.
#
# Starts a throwaway sshd on 127.0.0.1 (temp dir, own host and client keys,
# same approach as tests/support/sshd.rs) and measures, interleaved over
# ROUNDS rounds, medians of:
#   1. fresh connect + auth + `true`: provision vs `ssh host true`
#   2. per command, 200 sequential `true`: one provision connection vs
#      `ssh` through a warm ControlMaster, and vs fresh `ssh` (20 of those)
#   3. 50 MB upload, connection included: provision (`cat > f` and
#      upload_tar) vs `ssh host 'cat > f'` and scp
# Targets: connect <= 0.3x ssh; per command <= 0.5x ControlMaster;
# upload >= 1.2x `ssh cat`.
#
# The commands run as a user whose login shell is /bin/sh (created if
# missing: provbench), so that no shell rc file (here root's .bashrc runs
# `pyenv init`, ~80 ms) hides the transport's own cost.
#
# Usage: bench/ssh.sh [ROUNDS]   (root; not part of `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
N=200       # sequential commands per round (provision, ControlMaster)
NFRESH=20   # sequential fresh ssh per round (each ~0.2 s)

cargo build --release --example ssh_bench >/dev/null 2>&1 || cargo build --release --example ssh_bench
BENCH=$PWD/target/release/examples/ssh_bench

D=$(mktemp -d /tmp/provision-bench.XXXXXX)
SSHD_PID=
cleanup() {
  [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
  [ -S "$D/cm" ] && ssh -o ControlPath="$D/cm" -O exit x 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$D/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -f "$D/client_ed25519"
U=provbench
id -u "$U" >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' "$U"
H=$(getent passwd "$U" | cut -d: -f6); [ -d "$H" ] || install -d -o "$U" "$H"
chmod 755 "$D"
mkdir "$D/ak" && cp "$D/client_ed25519.pub" "$D/ak/$U" && chmod 755 "$D/ak" && chmod 644 "$D/ak/$U"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$D/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $D/host_ed25519
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $D/ak/%u
Subsystem sftp internal-sftp
MaxStartups 100:30:200
LogLevel ERROR
EOF
/usr/sbin/sshd -D -e -f "$D/sshd_config" 2>"$D/sshd.log" &
SSHD_PID=$!
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$D/host_ed25519.pub")" >"$D/known_hosts"
# Poll until the port answers with a banner (no sleep as synchronisation).
for _ in $(seq 1 500); do
  if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT; head -c 7 <&3" 2>/dev/null | grep -q SSH-2.0; then break; fi
  sleep 0.01
done

SSH=(ssh -F /dev/null -p "$PORT" -i "$D/client_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes
     -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$D/known_hosts" -o GlobalKnownHostsFile=/dev/null)
SCP=(scp -q -F /dev/null -P "$PORT" -i "$D/client_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes
     -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$D/known_hosts" -o GlobalKnownHostsFile=/dev/null)
PB=("$BENCH" "$PORT" "$D/client_ed25519" "$D/known_hosts" "$U")

"${SSH[@]}" "$U@127.0.0.1" true || { echo "ssh does not work"; cat "$D/sshd.log"; exit 1; }
"${PB[@]}" connect || { echo "provision does not work"; exit 1; }
"${SSH[@]}" -o ControlMaster=yes -o ControlPath="$D/cm" -o ControlPersist=yes -fN "$U@127.0.0.1"

head -c $((50 * 1024 * 1024)) /dev/urandom >"$D/blob"
WANT=$(sha256sum "$D/blob" | cut -d' ' -f1)
DEST=/tmp/provision-bench-dest.$$
mkdir -p "$DEST" && chown "$U" "$DEST"

ms() { date +%s%N; }
elapsed() { echo "scale=3; ($(ms) - $1) / 1000000" | bc; }
record() { echo "$2" >>"$D/r.$1"; }

for r in $(seq 1 "$ROUNDS"); do
  t=$(ms); "${PB[@]}" connect; record connect_prov "$(elapsed "$t")"
  t=$(ms); "${SSH[@]}" "$U@127.0.0.1" true; record connect_ssh "$(elapsed "$t")"

  record seq_prov "$(echo "scale=3; $("${PB[@]}" seq $N) / $N" | bc)"
  t=$(ms); for _ in $(seq 1 $N); do "${SSH[@]}" -o ControlPath="$D/cm" "$U@127.0.0.1" true; done
  record seq_cm "$(echo "scale=3; $(elapsed "$t") / $N" | bc)"
  t=$(ms); for _ in $(seq 1 $NFRESH); do "${SSH[@]}" "$U@127.0.0.1" true; done
  record seq_fresh "$(echo "scale=3; $(elapsed "$t") / $NFRESH" | bc)"

  rm -f "$DEST/f"; t=$(ms); "${PB[@]}" cat "$D/blob" "$DEST/f"; record up_prov_cat "$(elapsed "$t")"
  [ "$(sha256sum "$DEST/f" | cut -d' ' -f1)" = "$WANT" ] || { echo "provision cat upload corrupt"; exit 1; }
  rm -rf "$DEST/t"; t=$(ms); "${PB[@]}" tar "$D/blob" "$DEST/t"; record up_prov_tar "$(elapsed "$t")"
  [ "$(sha256sum "$DEST/t/blob" | cut -d' ' -f1)" = "$WANT" ] || { echo "provision tar upload corrupt"; exit 1; }
  rm -f "$DEST/f"; t=$(ms); "${SSH[@]}" "$U@127.0.0.1" "cat > $DEST/f" <"$D/blob"; record up_ssh_cat "$(elapsed "$t")"
  rm -f "$DEST/f"; t=$(ms); "${SCP[@]}" "$D/blob" "$U@127.0.0.1:$DEST/f"; record up_scp "$(elapsed "$t")"
  echo "round $r/$ROUNDS done" >&2
done
rm -rf "$DEST"

median() { sort -n "$D/r.$1" | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { echo "scale=3; $1 / $2" | bc; }
mbps() { echo "scale=1; 50 * 1000 / $1" | bc; }

cp=$(median connect_prov); cs=$(median connect_ssh)
sp=$(median seq_prov); sc=$(median seq_cm); sf=$(median seq_fresh)
upc=$(median up_prov_cat); upt=$(median up_prov_tar); usc=$(median up_ssh_cat); usp=$(median up_scp)
echo
echo "provision SSH transport vs OpenSSH $(ssh -V 2>&1 | cut -d' ' -f1), $ROUNDS interleaved rounds, medians"
printf '%-44s %10s %10s %8s\n' measurement provision openssh ratio
printf '%-44s %8s ms %8s ms %8sx  (target <= 0.3x)\n' "fresh connect + auth + true" "$cp" "$cs" "$(ratio "$cp" "$cs")"
printf '%-44s %8s ms %8s ms %8sx  (target <= 0.5x)\n' "per command, vs warm ControlMaster" "$sp" "$sc" "$(ratio "$sp" "$sc")"
printf '%-44s %8s ms %8s ms %8sx\n' "per command, vs fresh ssh each" "$sp" "$sf" "$(ratio "$sp" "$sf")"
printf '%-44s %5s MB/s %5s MB/s %8sx  (target >= 1.2x)\n' "50 MB upload: provision cat vs ssh 'cat > f'" "$(mbps "$upc")" "$(mbps "$usc")" "$(ratio "$usc" "$upc")"
printf '%-44s %5s MB/s %5s MB/s %8sx\n' "50 MB upload: provision upload_tar vs scp" "$(mbps "$upt")" "$(mbps "$usp")" "$(ratio "$usp" "$upt")"
printf '%-44s %5s MB/s %5s MB/s %8sx\n' "50 MB upload: provision cat vs scp" "$(mbps "$upc")" "$(mbps "$usp")" "$(ratio "$usp" "$upc")"
