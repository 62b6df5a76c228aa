#!/bin/bash
# The yardstick's work on host web, in provision's order (its --dry-run plan
# of bench/cold.sh's hosts file): Docker, the base image, network, volume,
# the three builds (no firewall: web publishes only Nginx's port, to all),
# then redis (ready), rails once PostGIS on db answers, nginx. Runs from
# /root/yard, where bench/cold.sh unpacked the files provision rendered
# (build contexts, env files).
set -eu
cd /root/yard
p=pvcold
state=/var/lib/provision/$p
sh install-docker.sh distro
docker load -i base.tar >/dev/null
docker network create "$p" >/dev/null
docker volume create redis-data >/dev/null
mkdir -p "$state" && cp -r files/build files/env "$state"/
for s in redis rails nginx; do
  docker build --quiet --tag "$p-$s" "$state/build/$s" >/dev/null
done
run() { # NAME ARGS...
  docker run --detach --name "$p-$1" --hostname "$1" --network "$p" --network-alias "$1" \
    --restart unless-stopped --env-file "$state/env/$1/env" "${@:2}" "$p-$1" >/dev/null
}
ready() { until docker exec "$p-$1" "${@:2}" >/dev/null 2>&1; do sleep 0.5; done; }
run redis --volume redis-data:/data
ready redis redis-cli -h 127.0.0.1 -p 6379 ping
# PostGIS listens on TCP only once its init is over (the entrypoint's
# first start is on the Unix socket alone): an open port is its readiness.
until (exec 3<>/dev/tcp/10.212.4.11/5432) 2>/dev/null; do sleep 0.5; done
run rails
ready rails ruby -rnet/http -e "exit Net::HTTP.get_response(URI('http://127.0.0.1:3000/up')).is_a?(Net::HTTPSuccess)"
run nginx --publish 80:80
