"""Monitoring pings (healthchecks-style: URL/start, URL, URL/fail) and failure webhooks.

A ping that fails is a warning: monitoring must never fail the backup it reports on.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone

TIMEOUT_S = 10


def _send(url: str, body: bytes | None, content_type: str) -> str | None:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": content_type, "User-Agent": "bak"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            response.read()
        return None
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


def ping(url: str, event: str, tail: str = "") -> str | None:
    """event: start | success | fail (the fail ping carries the error tail)."""
    base = url.rstrip("/")
    target = {"start": f"{base}/start", "success": base, "fail": f"{base}/fail"}[event]
    return _send(target, tail.encode()[-10000:] if event == "fail" else None, "text/plain; charset=utf-8")


def webhook(url: str, event: str, summary: str, details: dict) -> str | None:
    body = json.dumps({"source": "bak", "event": event, "host": socket.gethostname(),
                       "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "summary": summary, "details": details}).encode()
    return _send(url, body, "application/json")
