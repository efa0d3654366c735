"""Monitoring pings (healthchecks-style: URL/start, URL, URL/fail), failure webhooks, and notifications
through Apprise (ntfy, Gotify, Telegram, Discord, email and about 100 more, one URL each).

A ping or a notification that fails is a warning: monitoring must never fail the backup it reports on.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from urllib.parse import urlsplit

TIMEOUT_S = 10
TAIL_CHARS = 2000  # the end of an error is where its cause is; a phone shows a few lines
SECRET_PART_MIN = 8  # parts of a secret URL this long are masked too (shorter ones are words like `api`)
# How each event looks in Apprise (its notify types colour and title the message).
EVENT_TYPES = {"failure": "failure", "stale": "failure", "drill_failed": "failure", "verify_failed": "failure",
               "space": "warning", "success": "success"}


def shown_url(url: str) -> str:
    """A URL as bak may show it: scheme and host only. A ping or webhook URL's path and query are its
    token (a healthchecks UUID, a Slack hook), and a user or password before the host is a credential."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if _port(parts) else ""
    return f"{parts.scheme or '?'}://{host}{port}/..." if parts.path.strip("/") or parts.query else \
        f"{parts.scheme or '?'}://{host}{port}"


def _port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def resolve(ref, where: str) -> tuple[str | None, str | None]:
    """(the URL, None) for a literal URL or a secret reference to one; (None, why) when it cannot be read.
    Either way the URL's token parts are registered as secrets: masked wherever text would show them."""
    from bak.errors import BakError
    from bak.secrets import read_secret

    try:
        url = ref if isinstance(ref, str) else read_secret(ref, where)
    except BakError as exc:
        return None, f"{where}: {exc.message}"
    _register_token_parts(url)
    return url, None


def _send(url: str, body: bytes | None, content_type: str) -> str | None:
    try:
        address, headers = _without_credentials(url)
        request = urllib.request.Request(address, data=body, method="POST" if body is not None else "GET",
                                         headers={"Content-Type": content_type, "User-Agent": "bak", **headers})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            response.read()
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a URL urllib cannot even send
        from bak.secrets import scrub

        return f"{shown_url(url)}: {scrub(str(exc))[:300]}"


def _without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """`https://user:pass@host/...` as the URL urllib can send (it would look the whole `user:pass@host`
    up in DNS) and the Basic authorization header those credentials mean."""
    import base64

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    token = base64.b64encode(urllib.parse.unquote(userinfo).encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


def ping(ref, event: str, tail: str = "", where: str = "schedules[].ping_url") -> str | None:
    """event: start | success | fail (the fail ping carries the error tail). `ref`: the URL or a secret
    reference to it."""
    url, problem = resolve(ref, where)
    if url is None:
        return problem
    base = url.rstrip("/")
    target = {"start": f"{base}/start", "success": base, "fail": f"{base}/fail"}[event]
    return _send(target, tail.encode()[-10000:] if event == "fail" else None, "text/plain; charset=utf-8")


def webhook(ref, event: str, summary: str, details: dict) -> str | None:
    url, problem = resolve(ref, "notify.webhook_url")
    if url is None:
        return problem
    body = json.dumps({"source": "bak", "event": event, "host": socket.gethostname(),
                       "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "summary": summary, "details": details}).encode()
    return _send(url, body, "application/json")


def wanted(config, event: str) -> bool:
    """Whether an event notifies anyone: it is chosen and some notifier is configured."""
    return event in config.notify.get("events", []) and bool(
        config.notify.get("apprise_urls") or config.notify.get("webhook_url"))


def send(config, event: str, title: str, body: str, details: dict | None = None) -> list[str]:
    """One event to every configured notifier (the webhook and each Apprise URL), if the event is chosen.
    Returns what failed, as warnings; never raises for a notifier."""
    if event not in config.notify.get("events", []):
        return []
    body = body if len(body) <= TAIL_CHARS else "..." + body[-TAIL_CHARS:]
    problems = []
    if config.notify.get("webhook_url"):
        problems.append(webhook(config.notify["webhook_url"], event, body or title, details or {}))
    for number, ref in enumerate(config.notify.get("apprise_urls", [])):
        problems.append(_apprise(ref, f"notify.apprise_urls[{number}]", event, title, body))
    return [f"notification failed: {p}" for p in problems if p]


def _apprise(ref, where: str, event: str, title: str, body: str) -> str | None:
    """One Apprise URL (a literal, or a secret reference); the reason it failed, named without its secrets."""
    from bak.errors import BakError
    from bak.secrets import read_secret

    try:
        url = ref if isinstance(ref, str) else read_secret(ref, where)
    except BakError as exc:
        return f"{where}: {exc.message}"
    if not isinstance(ref, str):
        _register_parts(url)
    import apprise  # only here: it loads ~100 service plugins

    scheme = urlsplit(url).scheme or "?"
    notifier = apprise.Apprise()
    if not notifier.add(url):
        return f"{where} ({scheme}://): not a URL Apprise knows"
    with apprise.LogCapture(level=apprise.logging.WARNING, fmt="%(message)s") as logs:
        sent = notifier.notify(body=body or title, title=title, notify_type=EVENT_TYPES[event])
    if sent:
        return None
    reason = [line for line in logs.getvalue().splitlines() if line.strip()]
    return f"{where} ({scheme}://): " + (reason[-1][:300] if reason else "Apprise could not deliver it")


def _register_token_parts(url: str) -> None:
    """A ping or webhook URL's credentials, path and query (its token), not its host: masked wherever shown."""
    from bak.secrets import register

    parts = urlsplit(url)
    for piece in (parts.username, _password(parts), parts.path.strip("/"), parts.query,
                  *parts.path.split("/"), *parts.query.replace("&", "=").split("=")):
        if piece and len(piece) >= SECRET_PART_MIN:
            register(piece)


def _password(parts) -> str | None:
    try:
        return parts.password
    except ValueError:
        return None


def _register_parts(url: str) -> None:
    """A URL read from a secret carries its token somewhere (user, password, path, query): every part is
    masked wherever it would be shown, Apprise's own messages included."""
    from bak.secrets import register

    parts = urlsplit(url)
    register(url)
    for piece in (parts.username, parts.password, parts.netloc, parts.path, parts.query,
                  *parts.path.split("/"), *parts.query.replace("&", "=").split("=")):
        if piece and len(piece) >= SECRET_PART_MIN:
            register(piece)


def report_failures(config, event: str, what: str, failed_targets: list[str], outcome) -> None:
    """A verify or drill that failed: one notification naming the targets, with the errors' tail."""
    if failed_targets:
        tail = "\n".join(f"{e['where']}: {e['message']}" if e["where"] else e["message"] for e in outcome.errors)
        outcome.warnings.extend(send(config, event, f"bak: {what} failed for {', '.join(failed_targets)} on "
                                     f"{socket.gethostname()}", tail, {"targets": failed_targets, "errors": outcome.errors}))
