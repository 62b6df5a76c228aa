# Install and start Docker. Runs as root (through sudo when needed) with
# `sh -s SOURCE`; SOURCE is "distro" (the distribution's package) or
# "upstream" (Docker's own repository). Prints one status line on success.
set -eu
SOURCE="${1:-distro}"

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "docker: already running"
    exit 0
fi

. /etc/os-release
family="${ID:-} ${ID_LIKE:-}"
has_systemd() { [ -d /run/systemd/system ]; }

if ! command -v dockerd >/dev/null 2>&1; then
    case "$family" in
    *debian*|*ubuntu*)
        export DEBIAN_FRONTEND=noninteractive
        # Wait for unattended upgrades holding the dpkg lock instead of failing.
        APT="apt-get -q -o DPkg::Lock::Timeout=600"
        # Without an init system, the package's own start (its init script)
        # fails on ulimit in containers: forbid it; dockerd is started below.
        policy_added=no
        if ! has_systemd && [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 0755 /usr/sbin/policy-rc.d
            policy_added=yes
        fi
        $APT update >/dev/null
        if [ "$SOURCE" = upstream ]; then
            $APT install -y ca-certificates curl >/dev/null
            install -m 0755 -d /etc/apt/keyrings
            curl -fsSL "https://download.docker.com/linux/$ID/gpg" -o /etc/apt/keyrings/docker.asc
            echo "deb [signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/$ID ${VERSION_CODENAME:-stable} stable" \
                > /etc/apt/sources.list.d/docker.list
            $APT update >/dev/null
            $APT install -y docker-ce docker-ce-cli containerd.io >/dev/null
        else
            $APT install -y docker.io >/dev/null
        fi
        [ "$policy_added" = yes ] && rm -f /usr/sbin/policy-rc.d
        ;;
    *fedora*|*rhel*|*centos*)
        if [ "$SOURCE" = upstream ]; then
            dnf -y install dnf-plugins-core
            dnf config-manager --add-repo https://download.docker.com/linux/fedora/docker-ce.repo
            dnf -y install docker-ce docker-ce-cli containerd.io
        else
            dnf -y install moby-engine || dnf -y install docker
        fi
        ;;
    *)
        echo "docker: unsupported distribution '${ID:-unknown}': install Docker by hand" >&2
        exit 3
        ;;
    esac
fi

# Published ports stay closed across a reboot: the firewall rules provision
# keeps go back in before dockerd publishes anything (with systemd, its
# docker.service drop-in does the same). A rule set that fails keeps dockerd
# down rather than publishing a port unguarded.
restore_firewalls() {
    for f in /var/lib/provision/*/firewall/apply; do
        [ -f "$f" ] || continue
        sh "$f" || { echo "docker: cannot restore the firewall rules of $f: dockerd not started" >&2; exit 1; }
    done
}

if has_systemd; then
    systemctl enable --now docker >/dev/null 2>&1 || systemctl start docker
elif ! docker info >/dev/null 2>&1; then
    # No init system: start the daemon directly, detached from this session.
    restore_firewalls
    setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
fi

tries=0
until docker info >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 240 ]; then
        echo "docker: the daemon did not answer within 60 s" >&2
        tail -n 5 /var/log/dockerd.log >&2 2>/dev/null || true
        exit 1
    fi
    sleep 0.25
done
echo "docker: installed and running"
