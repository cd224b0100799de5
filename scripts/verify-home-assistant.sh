#!/usr/bin/env bash
# Check picluster's Home Assistant discovery against a real Home Assistant, as a new user would:
# a Mosquitto on a free loopback port, the master, two nodes on this one host (so with one
# hostname) and Home Assistant; devices named by node id with live values and entity ids
# <platform>.<node>_<key>, a SIGKILLed node turning unavailable, an HA restart losing and
# renaming nothing, a forgotten node leaving nothing behind, and no discovery complaints in
# HA's log. Prints PASS/FAIL.
#
# Not part of the test suite or CI: it installs Home Assistant (hundreds of MB) into its own
# venv, reused on later runs. Needs Python >= 3.13 for current Home Assistant releases.
#   HA_PYTHON    interpreter for Home Assistant's venv (default: newest python3.1x found)
#   HA_VERSION   Home Assistant release (default: the newest that installs on HA_PYTHON)
#   HA_DIR       where the venv and the run's files go (default /tmp/picluster-ha)
#   SCREENSHOT   also save a PNG of a node's device page there (needs chromium)
set -euo pipefail
# shellcheck disable=SC1091  # lib.sh is checked on its own (or use shellcheck -x)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HA_DIR="${HA_DIR:-/tmp/picluster-ha}"
HA_VENV="$HA_DIR/venv"

find_python() {
    local candidate
    for candidate in python3.14 python3.13 "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)'; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

apt_install mosquitto
[ -x "$VENV/bin/cluster-master" ] || ensure_venv master

if [ ! -x "$HA_VENV/bin/hass" ]; then
    HA_PYTHON="${HA_PYTHON:-$(find_python)}" || die "no Python >= 3.13 found: set HA_PYTHON"
    say "installing homeassistant${HA_VERSION:+==$HA_VERSION} into $HA_VENV (large download)"
    "$HA_PYTHON" -m venv "$HA_VENV"
    "$HA_VENV/bin/python" -m pip install -q --upgrade pip
    "$HA_VENV/bin/python" -m pip install -q "homeassistant${HA_VERSION:+==$HA_VERSION}"
fi
# Install the requirements of the integrations we use now, so HA never pips at run time.
mapfile -t requirements < <("$HA_VENV/bin/python" - "${SCREENSHOT:+frontend}" <<'PY'
import json, sys
from pathlib import Path
import homeassistant.components as components
root = Path(components.__path__[0])
for name in ["mqtt", "config", "onboarding", "api", "websocket_api", "http", *filter(None, sys.argv[1:])]:
    for requirement in json.loads((root / name / "manifest.json").read_text()).get("requirements", []):
        print(requirement)
PY
)
if [ ${#requirements[@]} -gt 0 ]; then
    "$HA_VENV/bin/python" -m pip install -q "${requirements[@]}"
fi
HA_RELEASE="$("$HA_VENV/bin/python" -c 'from homeassistant.const import __version__; print(__version__)')"
say "Home Assistant $HA_RELEASE"

RUN_DIR="$HA_DIR/run-$(date +%Y%m%d-%H%M%S)"
args=(--work "$RUN_DIR" --picluster-bin "$VENV/bin" --hass "$HA_VENV/bin/hass"
      --mosquitto "$(command -v mosquitto || echo /usr/sbin/mosquitto)")
if [ -n "${SCREENSHOT:-}" ]; then
    args+=(--screenshot "$SCREENSHOT" --chromium "$(command -v chromium || command -v chromium-browser)")
fi
exec "$HA_VENV/bin/python" "$ROOT/scripts/verify_home_assistant.py" "${args[@]}"
