#!/bin/bash
# The yardstick's work on host db, in provision's order: Docker, the base
# image, network, volume, firewall, the PostGIS build, its pg_hba.conf and
# password file, the container, pg_isready. See web.sh.
set -eu
cd /root/yard
p=pvcold
state=/var/lib/provision/$p
sh install-docker.sh distro
docker load -i base.tar >/dev/null
docker network create "$p" >/dev/null
docker volume create pgdata >/dev/null
mkdir -p "$state" && cp -r files/build files/env files/firewall files/live files/secrets "$state"/
sh "$state/firewall/apply"
if [ -d /run/systemd/system ]; then
  mkdir -p /etc/systemd/system/docker.service.d
  install -m 0644 "$state/firewall/docker-dropin.conf" /etc/systemd/system/docker.service.d/$p.conf
  systemctl daemon-reload
fi
docker build --quiet --tag "$p-postgis" "$state/build/postgis" >/dev/null
docker run --detach --name "$p-postgis" --hostname postgis --network "$p" --network-alias postgis \
  --restart unless-stopped --env-file "$state/env/postgis/env" \
  --mount "type=bind,source=$state/secrets/postgis/PG_PASSWORD,target=/run/secrets/PG_PASSWORD,readonly" \
  --publish 10.212.4.11:5432:5432 --volume pgdata:/var/lib/postgresql/data \
  --volume "$state/live/postgis:/etc/provision/live:ro" "$p-postgis" >/dev/null
until docker exec "$p-postgis" pg_isready -q -h 127.0.0.1 -p 5432; do sleep 0.5; done
