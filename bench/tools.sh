# shellcheck shell=bash
# Sourced by the bench scripts that time peers: provision's release binary
# built, and Ansible and pyinfra from PyPI in bench/.venv (git-ignored), the
# same pinned versions for every script.
#   bench_tools ROOT VENV
bench_tools() {
  (cd "$1" && cargo build --release --quiet)
  if [ ! -x "$2/bin/pyinfra" ] || [ ! -x "$2/bin/ansible-playbook" ]; then
    printf 'creating %s (ansible-core, ansible, pyinfra from PyPI)\n' "$2" >&2
    python3 -m venv "$2"
    "$2/bin/pip" install -q 'ansible-core==2.19.*' 'ansible==12.*' 'pyinfra==3.10.*'
  fi
}
