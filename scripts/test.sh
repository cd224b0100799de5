#!/usr/bin/env bash
# Run every check: ruff, mypy --strict, and the tests (unit and integration, against real
# Mosquitto brokers the tests start themselves). Does its own set-up on a fresh Debian or
# Raspberry Pi OS machine. Extra arguments go to pytest (e.g. -k end_to_end).
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
