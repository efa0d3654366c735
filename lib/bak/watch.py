"""After each create, what the homelab's monitoring should learn: the metrics file rewritten, and stale
targets and tight destinations notified, once a day while they last.

A create is what runs on a schedule, so it is where bak looks at every target, not only its own:
the target whose timer died is found by the others' runs. A problem is notified when it appears and
again every RESEND_AFTER while it lasts; once gone, it is forgotten, so its return is news again.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from bak import notify
from bak.config import Config
from bak.errors import BakError
from bak.report import Outcome

RESEND_AFTER = timedelta(hours=24)
FILLING_DAYS = 14  # 90% full this soon at the current growth is a space warning already
SENT_FILE = "notified.json"


def after_create(config: Config, outcome: Outcome) -> None:
    """Runs one status for both the metrics and the watch; every failure here is a warning."""
    from bak import metrics

    folder = metrics.textfile_folder(config, None)
    watched = [event for event in ("stale", "space") if notify.wanted(config, event)]
    if folder is None and not watched:
        return
    from bak.status import status

    now = datetime.now()
    try:
        health = status(config, now).result
    except BakError as exc:  # the journal held by another run, say: the backup itself is done
        outcome.warnings.append(f"no metrics or watch after this run: {exc.message}")
        return
    if folder is not None:
        try:
            metrics.publish(folder, metrics.render(metrics.families_from(health, now)))
        except (BakError, OSError) as exc:
            outcome.warnings.append(f"metrics not written: {getattr(exc, 'message', exc)}")
    if watched:
        outcome.warnings.extend(notify_once(config, alerts(health, watched), now))


def alerts(health: dict, events: list[str]) -> dict[str, tuple[str, str, str]]:
    """key -> (event, title, body) for each problem the chosen events cover, from a status result."""
    found = {}
    if "stale" in events:
        for entry in health["targets"]:
            if entry["state"] in ("STALE", "MISSING"):
                found[f"stale:{entry['target']}"] = ("stale", f"bak: {entry['target']} is {entry['state'].lower()}",
                                                     "\n".join(entry["problems"]))
    if "space" in events:
        for dest in health["destinations"]:
            name, days = dest["destination"], (dest.get("forecast") or {}).get("days_to", {}).get("critical")
            if dest["level"] in ("warn", "critical"):
                found[f"space:{name}"] = ("space", f"bak: {name} is {dest['used_percent']}% full", _space_body(dest))
            elif dest["level"] == "ok" and days is not None and days <= FILLING_DAYS:
                found[f"space:{name}"] = ("space", f"bak: {name} will be 90% full in ~{days:.0f} days", _space_body(dest))
    return found


def _space_body(dest: dict) -> str:
    from bak.forecast import outlook_text
    from bak.report import human_size

    return (f"{dest['destination']} ({dest['kind']} on {dest['host']}): {dest['used_percent']}% used, "
            f"{human_size(dest['free'])} free; at the current growth: {outlook_text(dest.get('forecast'))}. "
            "Prune (bak prune --dry-run) or add space.")


def notify_once(config: Config, found: dict[str, tuple[str, str, str]], now: datetime) -> list[str]:
    """Send what is new or was last sent RESEND_AFTER ago; remember what was delivered. Returns warnings."""
    from bak.paths import state_dir, write_atomically

    path = state_dir() / SENT_FILE
    try:
        sent = {key: datetime.fromisoformat(when) for key, when in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        sent = {}  # none yet, or unreadable: sending again is better than never
    warnings, kept = [], {}
    for key, (event, title, body) in found.items():
        if key in sent and now - sent[key] < RESEND_AFTER:
            kept[key] = sent[key]
            continue
        problems = notify.send(config, event, title, body, {"problem": key})
        warnings += problems
        if not problems:
            kept[key] = now
        elif key in sent:
            kept[key] = sent[key]
    write_atomically(path, json.dumps({k: v.isoformat() for k, v in kept.items()}).encode(), mode=0o600)
    return warnings
