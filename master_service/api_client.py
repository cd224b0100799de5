"""A small client of the master's HTTP API for the command line (urllib: no extra dependency)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

DEFAULT_API = "http://127.0.0.1:8080"


def api_base(given: str | None) -> str:
    """The API URL: the flag, else CLUSTER_API, else the local default."""
    return given or os.environ.get("CLUSTER_API") or DEFAULT_API


class ApiError(Exception):
    """The master could not be reached, or refused the request."""


def api_call(
    base: str, method: str, path: str, body: Any = None, timeout_s: float = 5.0
) -> tuple[int, Any]:
    """Call the master's API with the token from CLUSTER_API_TOKEN; (HTTP status, JSON)."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    token = os.environ.get("CLUSTER_API_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        base.rstrip("/") + path, data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if response.status == 204:  # No Content: nothing to decode
                return response.status, None
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.load(error)
        except ValueError:
            return error.code, {"detail": error.reason}
        finally:
            error.close()
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ApiError(f"cannot reach the master at {base}: {error}") from error


def detail_of(answer: Any) -> str:
    """The `detail` sentence of an error answer (or the answer itself as text)."""
    detail = answer.get("detail") if isinstance(answer, dict) else answer
    return json.dumps(detail) if not isinstance(detail, str) else detail
