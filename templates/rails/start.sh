#!/bin/sh
# Rendered by provision for service {{ service.name }} on host {{ host.name }}.
# Migrations on boot (Rails takes an advisory lock, so two app containers do not
# race), then puma in the foreground as PID 1: `docker stop` is a graceful stop.
set -eu
cd /app
# In swarm mode the env values that hold a secret (DATABASE_URL,
# SECRET_KEY_BASE) arrive as a Docker secret of KEY=value lines, never in
# the container's environment.
if [ -r /run/secrets/provision.env ]; then
    while IFS= read -r line; do export "$line"; done < /run/secrets/provision.env
fi
: "${DATABASE_URL:?is not set (it comes from the env file)}"
: "${SECRET_KEY_BASE:?is not set (it comes from the env file)}"
rm -f tmp/pids/server.pid
ruby bin/rails db:migrate
exec bundle exec puma -C config/puma.rb
