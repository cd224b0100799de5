#!/usr/bin/env bash
# Run the whole system on this machine: a Mosquitto broker, the master (API + dashboard) and
# one node publisher for this machine. Ctrl-C stops all three. Does its own set-up.
#   PICLUSTER_BROKER_PORT (default 1884), PICLUSTER_HTTP_PORT (default 8080) choose ports.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install mosquitto mosquitto-clients
ensure_venv master

RUN="$ROOT/.run"
mkdir -p "$RUN/mosquitto" "$RUN/node"
BROKER_PORT="$(free_port "${PICLUSTER_BROKER_PORT:-1884}")"
HTTP_PORT="$(free_port "${PICLUSTER_HTTP_PORT:-8080}")"

# The development config, on a port of our own (a system Mosquitto may hold 1883).
sed "s/^listener 1883 127.0.0.1$/listener $BROKER_PORT 127.0.0.1/" \
    "$ROOT/mosquitto/dev.conf" > "$RUN/mosquitto.conf"

pids=()
stop_all() {
    trap - INT TERM EXIT
    say "stopping"
    for (( i=${#pids[@]}-1; i>=0; i-- )); do kill "${pids[i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_all INT TERM EXIT

cd "$ROOT"  # dev.conf's paths are relative to the directory Mosquitto starts in
/usr/sbin/mosquitto -c "$RUN/mosquitto.conf" & pids+=($!)
"$VENV/bin/cluster-master" run --broker "mqtt://127.0.0.1:$BROKER_PORT" \
    --db "$RUN/master.db" --http "127.0.0.1:$HTTP_PORT" > "$RUN/master.log" 2>&1 & pids+=($!)
"$VENV/bin/cluster-node" run --broker "mqtt://127.0.0.1:$BROKER_PORT" --interval 2 \
    --state-dir "$RUN/node" > "$RUN/node.log" 2>&1 & pids+=($!)

for _ in $(seq 100); do
    "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$HTTP_PORT/healthz', timeout=1)" \
        2>/dev/null && break
    sleep 0.2
done

cat <<MSG

  picluster is running (logs in .run/):
    dashboard       http://127.0.0.1:$HTTP_PORT/
    API             http://127.0.0.1:$HTTP_PORT/api/nodes   (OpenAPI: /docs)
    broker          mqtt://127.0.0.1:$BROKER_PORT
    watch traffic   mosquitto_sub -p $BROKER_PORT -t 'cluster/#' -v
    node table      $VENV/bin/cluster-master status --api http://127.0.0.1:$HTTP_PORT

  Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
say "a process ended; see .run/*.log"
