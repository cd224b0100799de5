#!/usr/bin/env bash
# Run every check: ruff, mypy --strict, and the tests (unit and integration, against real
# Mosquitto brokers the tests start themselves), then the integration tests again with the
# masters on PostgreSQL (--master-db postgresql). Does its own set-up on a fresh Debian or
# Raspberry Pi OS machine. Extra arguments go to both pytest runs (e.g. -k end_to_end).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# mosquitto: the broker the tests start; shellcheck, docker-compose (config check only, no
# engine) and systemd-analyze: deploy checks; chromium: the dashboard test; iproute2 (ip,
# bridge): the network-namespace test; curl: the printed enrollment command; postgresql: the
# PostgreSQL server the storage tests start (initdb, pg_ctl).
apt_install mosquitto mosquitto-clients shellcheck docker-compose chromium systemd python3-venv openssl iproute2 curl postgresql
ensure_venv test

cd "$ROOT"
say "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
say "mypy --strict"
"$VENV/bin/mypy"
say "pytest"
"$VENV/bin/pytest" "$@"
say "pytest (integration, masters on PostgreSQL)"
# Exit status 5: the arguments (-k ...) selected none of the integration tests.
"$VENV/bin/pytest" tests/integration --master-db postgresql "$@" || [ $? -eq 5 ]
