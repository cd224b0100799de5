"""The node agent loads TLS, TOML and WebSocket modules only when it uses them (resident memory)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Together about a third of the agent's resident memory on x86_64 (bench/README.md).
HEAVY = (
    "ssl",
    "_ssl",
    "hashlib",
    "_hashlib",
    "urllib.request",
    "http.client",
    "tomllib",
    "importlib.metadata",
    "zipfile",
    "email",
)


def run_python(code: str) -> dict[str, object]:
    """Run `code` in a fresh interpreter (nothing imported yet); its last line prints JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_agent_on_plain_mqtt_loads_no_tls_toml_or_websocket_module():
    result = run_python(
        f"""
        import json, sys
        from node_publisher.cli import build_agent, build_parser, main
        from node_publisher.settings import settings_from_flags
        settings = settings_from_flags(
            {{"broker": "mqtt://127.0.0.1:1", "node_id": "lean", "state_dir": sys.argv[0]}}, {{}}
        )
        from node_publisher.app import make_client
        make_client(settings, "lean")  # a client for a plain broker: no TLS context
        print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    )
    assert result["loaded"] == []


def test_a_tls_broker_gets_a_real_tls_client_and_paho_sees_the_real_ssl_errors():
    result = run_python(
        """
        import json, sys
        from node_publisher.app import make_client
        from node_publisher.settings import settings_from_flags
        import paho.mqtt.client
        stand_in = paho.mqtt.client.ssl
        before = "ssl" in sys.modules
        never = stand_in.SSLWantReadError  # what paho's socket reads catch on plain TCP
        settings = settings_from_flags(
            {"broker": "mqtts://127.0.0.1:1", "node_id": "tls", "state_dir": sys.argv[0]}, {}
        )
        client = make_client(settings, "tls")
        import ssl
        print(json.dumps({
            "before": before,
            "never_matches_a_blocking_read": not issubclass(BlockingIOError, never),
            "context": isinstance(client._ssl_context, ssl.SSLContext),
            "verifies": client._ssl_context.verify_mode == ssl.CERT_REQUIRED,
            "real_errors": (
                stand_in.SSLWantReadError is ssl.SSLWantReadError
                and stand_in.SSLWantWriteError is ssl.SSLWantWriteError
            ),
        }))
        """
    )
    assert result == {
        "before": False,
        "never_matches_a_blocking_read": True,
        "context": True,
        "verifies": True,
        "real_errors": True,
    }


def test_modules_deferred_for_paho_are_the_real_ones_for_everyone_else():
    result = run_python(
        """
        import json, sys
        import node_publisher.lean_imports
        import paho.mqtt.client
        import hashlib, urllib.request, uuid
        print(json.dumps({
            "hashlib": type(hashlib).__name__ == "module" and hasattr(hashlib, "sha256"),
            "urllib": hasattr(urllib.request, "urlopen"),
            "uuid": len(str(uuid.uuid4())) == 36,
            "paho_sha1": paho.mqtt.client.hashlib.sha1(b"x").hexdigest()[:8],
            "paho_proxies": isinstance(paho.mqtt.client.urllib.request.getproxies(), dict),
        }))
        """
    )
    assert result == {
        "hashlib": True,
        "urllib": True,
        "uuid": True,
        "paho_sha1": "11f6ad8e",
        "paho_proxies": True,
    }


def test_the_agent_version_is_the_installed_distribution_s():
    from importlib import metadata

    import node_publisher

    assert node_publisher.__version__ == metadata.version("picluster")
