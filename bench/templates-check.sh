#!/usr/bin/env bash
# templates-check: the service templates, really built and run on the local Docker
# engine. Not part of `cargo test`: it needs a Docker engine, the debian:bookworm
# image and Debian's mirror, and takes a few minutes.
#
#   bench/templates-check.sh            # render all 7, build and run 4, check
#   KEEP=1 bench/templates-check.sh     # leave the containers running afterwards
#   NO_CACHE=1 bench/templates-check.sh # build without the layer cache (for timings)
#   VERBOSE=1 bench/templates-check.sh  # also print the rendered upstream-image files
#
# 1. Renders every templates/<service>/ with bench/templates-render.py (the
#    minijinja Python binding, same engine as the Rust renderer; jinja2 as a
#    fall-back) into a scratch folder, with the same-host context of the contract
#    (templates/README.md): uses.<svc>.address = the container name.
# 2. Checks the rendered fluentd, elasticsearch and kibana files (no registry
#    here: they cannot be built) and that strict undefined catches a missing `uses`.
# 3. Builds pvcheck-redis, pvcheck-postgis, pvcheck-rails (with
#    examples/rails_app as app/) and pvcheck-nginx, one after the other, timing each.
# 4. Runs them on one user-defined network, secrets only in env files, waits with
#    each manifest's `ready` probe, then checks: the page through Nginx with its
#    counts, the session count going up with the cookie, the visit rows with
#    their PostGIS points, the session keys in Redis, rows kept across a
#    `docker stop` + rm and a `docker rm -f` of PostGIS on the same volume,
#    sessions kept across a Redis restart, and no secret in any image.
# 5. Removes its containers, network, volumes and scratch folder (not the images).
# Ends with "N passed, N failed"; exits non-zero when a check failed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TEMPLATES=$ROOT/templates
APP=$ROOT/examples/rails_app
NET=pvcheck-net
PG_VOLUME=pvcheck-pgdata
REDIS_VOLUME=pvcheck-redisdata
CONTAINERS=(pvcheck-nginx pvcheck-rails pvcheck-redis pvcheck-postgis)
WORK=$(mktemp -d /tmp/pvcheck.XXXXXX)
PASSED=0
FAILED=0

log() { printf '==> %s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); printf 'ok    %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$1"; [ -z "${2:-}" ] || printf '      %s\n' "$2"; }
# check NAME COMMAND...: passes when the command succeeds.
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }

cleanup() {
    if [ -n "${KEEP:-}" ]; then
        log "KEEP set: containers left running, scratch in $WORK"
        return
    fi
    docker rm -f "${CONTAINERS[@]}" >/dev/null 2>&1 || true
    docker network rm "$NET" >/dev/null 2>&1 || true
    docker volume rm "$PG_VOLUME" "$REDIS_VOLUME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- a Python that can render -------------------------------------------------
VENV=${PVCHECK_VENV:-/tmp/pvcheck-venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import minijinja' 2>/dev/null; then
    "$VENV/bin/pip" install -q minijinja || "$VENV/bin/pip" install -q jinja2
fi
PY=$VENV/bin/python

# --- docker and the base image ------------------------------------------------
docker info >/dev/null 2>&1 || { echo "templates-check: no Docker engine answering" >&2; exit 2; }
docker image inspect debian:bookworm >/dev/null 2>&1 || {
    echo "templates-check: debian:bookworm is missing (see /work/shared/LAB.md: debootstrap + docker import)" >&2
    exit 2
}
docker rm -f "${CONTAINERS[@]}" >/dev/null 2>&1 || true
docker network rm "$NET" >/dev/null 2>&1 || true
docker volume rm "$PG_VOLUME" "$REDIS_VOLUME" >/dev/null 2>&1 || true

# --- 1. render ----------------------------------------------------------------
# Same-host wiring: address = container name, port = the service's own port.
uses() { # uses SERVICE PORT -> one entry of the uses map
    printf '"%s": {"address": "pvcheck-%s", "port": %s, "url_host": "pvcheck-%s"}' "$1" "$1" "$2" "$1"
}
HOST='"host": {"name": "local", "address": "127.0.0.1"}'
render() { # render SERVICE USES_JSON [CLIENTS_JSON] [OUT]
    "$PY" "$ROOT/bench/templates-render.py" "$TEMPLATES" "$1" "${4:-$WORK/$1}" \
        --context "{$HOST, \"uses\": {$2}, \"clients\": ${3:-[]}}"
}
log "render"
render redis ""
render postgis ""
render rails "$(uses postgis 5432), $(uses redis 6379)"
render nginx "$(uses rails 3000)"
render fluentd "$(uses elasticsearch 9200)"
render elasticsearch ""
render kibana "$(uses elasticsearch 9200)"
render postgis "" '["10.0.0.5", "fd00::7"]' "$WORK/postgis-clients" >/dev/null
cp -r "$APP" "$WORK/rails/app"
rm -f "$WORK/rails/app/Gemfile.lock"

# --- 2. the rendered files of what cannot be built here -------------------------
log "rendered files"
has() { grep -qF -- "$2" "$1"; }
check "fluentd: forward source on 24224" has "$WORK/fluentd/fluent.conf" "port 24224"
check "fluentd: elasticsearch output to uses.elasticsearch" \
    bash -c "grep -q '^  host pvcheck-elasticsearch$' '$WORK/fluentd/fluent.conf' && grep -q '^  port 9200$' '$WORK/fluentd/fluent.conf'"
check "fluentd: FROM the upstream image" has "$WORK/fluentd/Dockerfile" "FROM fluent/fluentd:"
check "elasticsearch: single node, security off" \
    bash -c "grep -q '^discovery.type: single-node' '$WORK/elasticsearch/elasticsearch.yml' && grep -q '^xpack.security.enabled: false' '$WORK/elasticsearch/elasticsearch.yml'"
check "elasticsearch: heap from the var" has "$WORK/elasticsearch/heap.options" "-Xmx512m"
check "kibana: ELASTICSEARCH_HOSTS from uses" has "$WORK/kibana/Dockerfile" "ELASTICSEARCH_HOSTS=http://pvcheck-elasticsearch:9200"
check "postgis: one pg_hba line per client host" \
    bash -c "grep -q '10.0.0.5/32  scram-sha-256' '$WORK/postgis-clients/pg_hba.conf' && grep -q 'fd00::7/128  scram-sha-256' '$WORK/postgis-clients/pg_hba.conf'"
check "no {{ left in any rendered file" bash -c "! grep -rl '{{' '$WORK' --exclude-dir=app"
if render nginx "" "[]" "$WORK/nginx-unwired" >"$WORK/strict.log" 2>&1; then
    fail "strict undefined: nginx without uses.rails must not render"
else
    pass "strict undefined: nginx without uses.rails does not render ($(head -1 "$WORK/strict.log" | cut -c1-90))"
fi
if [ -n "${VERBOSE:-}" ]; then
    for f in fluentd/Dockerfile fluentd/fluent.conf elasticsearch/Dockerfile \
        elasticsearch/elasticsearch.yml elasticsearch/heap.options kibana/Dockerfile; do
        printf -- '--- %s\n' "$f"; cat "$WORK/$f"
    done
fi

# --- 3. build -------------------------------------------------------------------
log "build (sequential)"
declare -A BUILD_SECONDS
for svc in redis postgis rails nginx; do
    start=$(date +%s.%N)
    if docker build ${NO_CACHE:+--no-cache} -t "pvcheck-$svc" "$WORK/$svc" >"$WORK/build-$svc.log" 2>&1; then
        BUILD_SECONDS[$svc]=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        pass "build pvcheck-$svc (${BUILD_SECONDS[$svc]} s)"
    else
        fail "build pvcheck-$svc" "see the tail of its log:"
        tail -20 "$WORK/build-$svc.log"
        echo "$PASSED passed, $FAILED failed"
        exit 1
    fi
done

# --- 4. run and check -------------------------------------------------------------
# Secrets: generated here, only in env files and the PostGIS password file (mode
# 600, mounted read-only at /run/secrets/PG_PASSWORD), never in a build context.
umask 077
PG_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
SECRET_KEY_BASE=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s' "$PG_PASSWORD" >"$WORK/PG_PASSWORD"
cat >"$WORK/rails.env" <<EOF
DATABASE_URL=postgres://app:$PG_PASSWORD@pvcheck-postgis:5432/app
REDIS_URL=redis://pvcheck-redis:6379/0
SECRET_KEY_BASE=$SECRET_KEY_BASE
RAILS_ENV=production
EOF
umask 022

check "no secret in a build context" bash -c "! grep -rqF '$PG_PASSWORD' '$WORK/redis' '$WORK/postgis' '$WORK/rails' '$WORK/nginx'"

# wait_ready SERVICE SECONDS: runs the manifest's `ready` argv in the container.
wait_ready() {
    local svc=$1 limit=$2 probe i
    probe=$("$PY" -c 'import shlex, sys, tomllib; print(shlex.join(tomllib.load(open(sys.argv[1], "rb"))["ready"]))' \
        "$TEMPLATES/$svc/template.toml")
    for ((i = 0; i < limit; i++)); do
        if eval "docker exec pvcheck-$svc $probe" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}
run_postgis() {
    docker run -d --name pvcheck-postgis --network "$NET" \
        --mount "type=bind,source=$WORK/PG_PASSWORD,target=/run/secrets/PG_PASSWORD,readonly" \
        -v "$PG_VOLUME:/var/lib/postgresql/data" pvcheck-postgis >/dev/null
}
run_redis() {
    docker run -d --name pvcheck-redis --network "$NET" \
        -v "$REDIS_VOLUME:/data" pvcheck-redis >/dev/null
}
psql_app() { docker exec -u postgres pvcheck-postgis psql -X -At -d app -c "$1"; }

log "run"
docker network create "$NET" >/dev/null
docker volume create "$PG_VOLUME" >/dev/null
docker volume create "$REDIS_VOLUME" >/dev/null
run_redis
run_postgis
check "redis ready (redis-cli ping)" wait_ready redis 30
check "postgis ready (pg_isready), first start done" wait_ready postgis 60
docker run -d --name pvcheck-rails --network "$NET" --env-file "$WORK/rails.env" pvcheck-rails >/dev/null
check "rails ready (GET /up), migrations run" wait_ready rails 90
docker run -d --name pvcheck-nginx --network "$NET" -p 127.0.0.1::80 pvcheck-nginx >/dev/null
check "nginx ready (port 80 open)" wait_ready nginx 30

PORT=$(docker port pvcheck-nginx 80/tcp | head -1 | sed 's/.*://')
URL=http://127.0.0.1:$PORT
JAR=$WORK/cookies
count() { sed -n "s/.*<span id=\"$1\">\([0-9]*\)<.*/\1/p" "$2"; }

log "check through nginx at $URL"
curl -fsS -c "$JAR" -b "$JAR" "$URL/" >"$WORK/page1.html" || true
check "GET / through nginx shows the counts" grep -q 'Visits in this session' "$WORK/page1.html"
curl -fsS -c "$JAR" -b "$JAR" "$URL/?lon=2.3522&lat=48.8566" >"$WORK/page2.html" || true
[ "$(count session "$WORK/page1.html")" = 1 ] && [ "$(count session "$WORK/page2.html")" = 2 ] \
    && pass "same cookie: session count 1 then 2" \
    || fail "same cookie: session count 1 then 2" "got $(count session "$WORK/page1.html") then $(count session "$WORK/page2.html")"
curl -fsS "$URL/" >"$WORK/page3.html" || true
[ "$(count session "$WORK/page3.html")" = 1 ] && [ "$(count total "$WORK/page3.html")" = 3 ] \
    && pass "no cookie: a new session (1), total 3" \
    || fail "no cookie: a new session (1), total 3" "got session $(count session "$WORK/page3.html"), total $(count total "$WORK/page3.html")"
check "GET /up is 200" curl -fsS -o /dev/null "$URL/up"

POINTS=$(psql_app "SELECT ST_AsText(location) FROM visits ORDER BY id" | tr '\n' ' ')
printf '      visits: %s\n' "$POINTS"
[ "$POINTS" = "POINT(12.4964 41.9028) POINT(2.3522 48.8566) POINT(12.4964 41.9028) " ] \
    && pass "psql: 3 visit rows with their PostGIS points" || fail "psql: 3 visit rows with their PostGIS points"
check "psql: location is geography(Point,4326)" \
    bash -c "[ \"\$(docker exec -u postgres pvcheck-postgis psql -X -At -d app -c \"SELECT type || ',' || srid FROM geography_columns WHERE f_table_name = 'visits'\")\" = 'Point,4326' ]"
KEYS=$(docker exec pvcheck-redis redis-cli --raw keys '*' | sort)
printf '      redis keys: %s\n' "$(echo "$KEYS" | tr '\n' ' ')"
[ "$(echo "$KEYS" | grep -c '_session_id:')" = 2 ] \
    && pass "redis: the 2 session keys exist" || fail "redis: the 2 session keys exist"
check "postgis: the app role logs in with the password over TCP" \
    bash -c "docker exec -e PGPASSWORD='$PG_PASSWORD' pvcheck-postgis psql -X -At -h 127.0.0.1 -U app -d app -c 'SELECT 1' >/dev/null"
check "postgis: a wrong password is refused" \
    bash -c "! docker exec -e PGPASSWORD=wrong pvcheck-postgis psql -X -At -h 127.0.0.1 -U app -d app -c 'SELECT 1' 2>/dev/null"
check "postgis: postgres is PID 1" bash -c "[ \"\$(docker exec pvcheck-postgis cat /proc/1/comm)\" = postgres ]"

log "persistence"
docker stop pvcheck-postgis >/dev/null
check "postgis: docker stop is a clean shutdown" \
    bash -c "docker logs pvcheck-postgis 2>&1 | tail -3 | grep -q 'database system is shut down'"
docker rm pvcheck-postgis >/dev/null
run_postgis
check "postgis: re-run on the same volume ready" wait_ready postgis 60
check "postgis: 3 rows after stop + rm + run" bash -c "[ \"\$(docker exec -u postgres pvcheck-postgis psql -X -At -d app -c 'SELECT count(*) FROM visits')\" = 3 ]"
check "postgis: no second first start" bash -c "! docker logs pvcheck-postgis 2>&1 | grep -q 'creating the cluster'"
docker rm -f pvcheck-postgis >/dev/null
run_postgis
check "postgis: re-run after docker rm -f ready" wait_ready postgis 60
check "postgis: 3 rows after rm -f + run" bash -c "[ \"\$(docker exec -u postgres pvcheck-postgis psql -X -At -d app -c 'SELECT count(*) FROM visits')\" = 3 ]"

docker rm -f pvcheck-redis >/dev/null
run_redis
check "redis: re-run on the same volume ready" wait_ready redis 30
# Rails reconnects to both by itself: same cookie, session count goes on at 3.
curl -fsS -c "$JAR" -b "$JAR" "$URL/" >"$WORK/page4.html" || true
[ "$(count session "$WORK/page4.html")" = 3 ] && [ "$(count total "$WORK/page4.html")" = 4 ] \
    && pass "after PostGIS and Redis restarts: session 3, total 4 (AOF and volume kept both)" \
    || fail "after PostGIS and Redis restarts: session 3, total 4" "got session $(count session "$WORK/page4.html"), total $(count total "$WORK/page4.html")"

log "secrets"
for svc in redis postgis rails nginx; do
    if { docker image inspect "pvcheck-$svc"; docker history --no-trunc "pvcheck-$svc"; } | grep -qF -e "$PG_PASSWORD" -e "$SECRET_KEY_BASE"; then
        fail "no secret in image pvcheck-$svc"
    else
        pass "no secret in image pvcheck-$svc"
    fi
done
check "rails logs do not show the password" bash -c "! docker logs pvcheck-rails 2>&1 | grep -qF '$PG_PASSWORD'"
check "postgis logs do not show the password" bash -c "! docker logs pvcheck-postgis 2>&1 | grep -qF '$PG_PASSWORD'"

log "graceful stops"
# stopped_within SECONDS CONTAINER: docker stop returns before its 10 s kill.
stopped_within() {
    local start end
    start=$(date +%s)
    docker stop "$2" >/dev/null
    end=$(date +%s)
    [ $((end - start)) -lt "$1" ] && [ "$(docker inspect -f '{{.State.ExitCode}}' "$2")" != 137 ]
}
check "nginx: docker stop (SIGQUIT) within 5 s, not killed" stopped_within 5 pvcheck-nginx
check "rails: docker stop (puma on SIGTERM) within 8 s, not killed" stopped_within 8 pvcheck-rails
check "redis: docker stop within 5 s, not killed" stopped_within 5 pvcheck-redis

log "build times (s): redis ${BUILD_SECONDS[redis]}, postgis ${BUILD_SECONDS[postgis]}, rails ${BUILD_SECONDS[rails]}, nginx ${BUILD_SECONDS[nginx]}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
