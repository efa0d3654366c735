"""The `bak` command line: parse, load config, call one action, emit one envelope.

Heavy modules (paramiko, jsonschema, rich, the methods) are imported inside commands,
so `bak --help` starts fast.
"""

from __future__ import annotations

import functools
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import click

from bak import __version__
from bak.digest import DEFAULT_ROWS
from bak.errors import EXIT_BAD_INPUT, BakError, ConfigError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


CONFIG_HELP = "Config file (default: $BAK_CONFIG, then the user config folder)."
STATE_HELP = ("bak's state folder: journal, locks, known_hosts (default: $BAK_STATE_DIR, then the config's state_dir, "
              "then the user state folder).")


def output_options(fn, with_config: bool = True, rows: bool = False):
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON envelope (for scripts and the agent).")(fn)
    if rows:
        fn = click.option("--limit", "rows_limit", type=click.IntRange(1, 100000), metavar="N",
                          help=f"With --json: show at most N rows of each list (default {DEFAULT_ROWS}, fewer when they "
                               "would not fit what the agent reads); every row goes to the file the envelope names "
                               "(detail.file). Changes nothing else.")(fn)
    if with_config:  # only where a config is read: every option --help shows does something
        fn = click.option("--state-dir", "state_path", type=click.Path(file_okay=False, path_type=Path),
                          help=STATE_HELP)(fn)
        fn = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                          help=CONFIG_HELP)(fn)
    return fn


def _all_or_named(ctx, param, value):
    """--all says "every enabled target" out loud; with --target it would contradict it."""
    if value and ctx.params.get("targets"):
        raise click.BadParameter("--all and --target exclude each other", ctx=ctx, param=param)
    return value


def action(name: str, *, needs_config: bool = True, human: Callable[[dict], None] | None = None,
           rows: bool = False):
    """Wraps a command body that returns an Outcome: config, envelope, exit code, all in one place.
    `rows`: the command lists rows, and takes --limit for its JSON envelope."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, as_json: bool, config_path: Path | None = None, state_path: Path | None = None,
                    rows_limit: int | None = None, **kwargs):
            from bak import paths
            from bak.interrupts import sigterm_raises
            from bak.report import emit, envelope

            started, clock = datetime.now(timezone.utc), time.monotonic()
            result, warnings, errors, code = None, [], [], 0
            given = click.get_current_context().find_root().obj or {}  # bak --config F --state-dir D COMMAND
            config_path, state_path = config_path or given.get("config"), state_path or given.get("state_dir")
            _OUTPUT["json"] = as_json
            paths.choose_state_dir(state_path)
            try:
                # SIGTERM (systemd stopping a timer's service, `kill`) ends a command as Ctrl-C does: its
                # `finally` blocks run, then one envelope says `interrupted` and bak exits 143.
                with sigterm_raises():
                    refuse_undecodable(click.get_current_context())
                    if needs_config == "lazy":
                        kwargs["load_config"] = lambda: load_config(config_path)
                    elif needs_config:
                        kwargs["config"] = load_config(config_path)
                    outcome = fn(*args, **kwargs)
                result, warnings, errors, code = outcome.result, outcome.warnings, outcome.errors, outcome.exit_code
            except ConfigError as exc:
                errors, code = exc.to_errors(), exc.exit_code
            except BakError as exc:
                errors, code = [exc.to_error()], exc.exit_code
            except (Exception, RecursionError) as exc:  # a bug: still one envelope, and no traceback unless asked
                errors, code = [internal_error(exc)], 1
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM where bak must clean up (interrupts.Terminated)
                errors = [{"code": "interrupted", "message": str(exc) or "interrupted", "where": None, "hint": None}]
                code = getattr(exc, "exit_code", 130)
            shown = rows_limit or (kwargs["limit"] if _given("limit") else None)  # log's own --limit counts too
            try:
                emit(envelope(name, started, time.monotonic() - clock, result, warnings, errors), as_json, human,
                     limit=shown)
            finally:
                paths.choose_state_dir(None)
                _OUTPUT["json"] = False
            sys.exit(code)

        return output_options(wrapper, with_config=bool(needs_config), rows=rows)

    return decorate


# Options that name a path but are typed as text: a file name need not be UTF-8 (Python reads such argv bytes
# as lone surrogates, \udc80-\udcff, and gives them back to the system unchanged).
PATH_TEXT_OPTIONS = frozenset({"into", "single_file", "source"})


def refuse_undecodable(ctx: click.Context) -> None:
    """A name (target, host, destination, backup) given as bytes that are not UTF-8 is bad input, said at once:
    it can be no configured name, and the journal, JSON and SQLite cannot carry it."""
    from bak.errors import BadInput

    for param in ctx.command.params:
        if isinstance(param.type, click.Path) or param.name in PATH_TEXT_OPTIONS:
            continue
        value = ctx.params.get(param.name)
        for text in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(text, str) and any("\ud800" <= c <= "\udfff" for c in text):
                raise BadInput(f"{param.opts[0] if param.opts else param.name} is not UTF-8 text",
                               where=param.opts[0] if param.opts else param.name,
                               hint="Names in bak's config are plain text: give the name as it is written there.")


def internal_error(exc: BaseException) -> dict:
    """An unexpected exception as an envelope error; BAK_DEBUG=1 prints its traceback on stderr."""
    import os
    import traceback

    if os.environ.get("BAK_DEBUG"):
        traceback.print_exception(exc)
    return {"code": "internal_error", "message": f"bak hit an internal error: {type(exc).__name__}: {str(exc)[:300]}",
            "where": None, "hint": "This is a bug in bak: run again with BAK_DEBUG=1 for the traceback and report it."}


class BakGroup(click.Group):
    """Usage errors (an unknown option, a bad value) as one envelope under --json, exit 2, like every other bad input."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                  **extra)
        except click.exceptions.UsageError as exc:
            self._usage_error(exc, args)
        except click.exceptions.Abort:
            sys.exit(130)
        if isinstance(result, int) and standalone_mode:  # --help, --version
            sys.exit(result)
        return result

    def _usage_error(self, exc: click.exceptions.UsageError, args: list[str]) -> None:
        from bak.report import emit, envelope

        if "--json" in args:
            words = [a for a in args if not a.startswith("-")][:2]
            group = self.commands.get(words[0]) if words else None
            command = " ".join(words[:2] if isinstance(group, click.Group) and words[1:] and words[1] in group.commands
                               else words[:1] if group else [])
            error = {"code": "bad_input", "message": exc.format_message()[:500], "where": command or None,
                     "hint": f"See: bak {command} --help" if command else "See: bak --help"}
            emit(envelope(command or "bak", datetime.now(timezone.utc), 0.0, None, [], [error]), True, None)
        else:
            exc.show()
        sys.exit(EXIT_BAD_INPUT)


def load_config(path: Path | None):
    from bak import config, paths

    loaded = config.load(path or paths.config_file())
    paths.use_config_state_dir(loaded.state_dir)
    return loaded


_OUTPUT = {"json": False}  # under --json, progress lines stay off stderr: the agent reads both streams


def _given(option: str) -> bool:
    """Whether the command line gave `option` (not its default)."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(option) == ParameterSource.COMMANDLINE


@click.group(cls=BakGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="bak")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help=CONFIG_HELP + " Also taken after the command.")
@click.option("--state-dir", "state_path", type=click.Path(file_okay=False, path_type=Path),
              help=STATE_HELP + " Also taken after the command.")
@click.pass_context
def cli(ctx, config_path, state_path):
    """bak: back up, verify, restore, prune and schedule a homelab's backups.

    Exit codes: 0 all good; 1 ran and found problems; 2 bad input, nothing done;
    3 refused for safety or a precondition, nothing done.
    """
    ctx.obj = {"config": config_path, "state_dir": state_path}


# --- config ------------------------------------------------------------------------------
@cli.group("config", context_settings=CONTEXT)
def config_group():
    """Check the config, or print a documented example."""


def _human_config_check(result: dict) -> None:
    from bak.report import say

    say(f"config OK: {result['path']} ({result['targets']} targets, {result['hosts']} hosts, "
        f"{result['destinations']} destinations)")


@config_group.command("check")
@action("config check", needs_config=True, human=_human_config_check)
def config_check(config):
    """Validate the config against its schema; list every problem with its key path."""
    from bak.report import Outcome

    return Outcome({"path": config.source, "targets": len(config.targets), "hosts": len(config.hosts),
                    "destinations": len(config.destinations), "policies": len(config.policies),
                    "schedules": len(config.schedules)})


def _human_text(result: dict) -> None:
    click.echo(result["text"], nl=False)


@config_group.command("example")
@action("config example", needs_config=False, human=_human_text)
def config_example():
    """Print an example homelab as a valid config (documentation; nothing connects to it)."""
    from bak import config
    from bak.report import Outcome

    return Outcome({"format": "yaml", "text": config.example_text()})


@config_group.command("reference")
@action("config reference", needs_config=False, human=_human_text)
def config_reference():
    """Print every config key with its type, default, meaning and example (references/config.md)."""
    from bak import config
    from bak.config.reference import render
    from bak.report import Outcome

    return Outcome({"format": "markdown", "text": render(config.schema()) + "\n"})


# --- ssh ---------------------------------------------------------------------------------
@cli.group("ssh", context_settings=CONTEXT)
def ssh_group():
    """Trust and check SSH hosts."""


def _human_trust(result: dict) -> None:
    from bak.report import say

    state = "already trusted" if result["already_trusted"] else "now trusted"
    say(f"{result['host']} ({result['entry']}) {state}: {result['key_type']} {result['fingerprint']}\n"
        f"recorded in {result['known_hosts']}")


@ssh_group.command("trust")
@click.argument("host")
@click.option("--fingerprint", help="Expected SHA256:... fingerprint; refuse if the host presents another.")
@click.option("--replace", is_flag=True, help="Replace a different key already recorded (after a reinstall).")
@action("ssh trust", human=_human_trust)
def ssh_trust(host, fingerprint, replace, config):
    """Record HOST's SSH host key in known_hosts (shows its fingerprint)."""
    from bak.report import Outcome
    from bak.run.hosts import check_fingerprint, known_hosts_path
    from bak.run.ssh import trust_host

    target = _configured_host(config, host)
    if fingerprint is not None:
        check_fingerprint(fingerprint)
    return Outcome(trust_host(target, known_hosts_path(target), fingerprint, replace))


def _human_ssh_check(result: dict) -> None:
    from bak.report import table

    table("SSH hosts", ["host", "address", "ok", "remote", "error"],
          [[h["host"], h["address"], "yes" if h["ok"] else "NO", h.get("uname"), h.get("error")] for h in result["hosts"]])


@ssh_group.command("check")
@click.argument("hosts", nargs=-1, metavar="[HOST]...")
@action("ssh check", human=_human_ssh_check)
def ssh_check(hosts, config):
    """Connect to each HOST (default: all) over one connection and run `uname -srn`."""
    from bak.report import Outcome
    from bak.run import Hosts

    names = list(hosts) or sorted(config.hosts)
    outcome = Outcome({"hosts": []})
    with Hosts(config) as pool:
        for name in names:
            host = _configured_host(config, name)
            row = {"host": name, "address": f"{host.address}:{host.port}", "ok": False}
            try:
                row["uname"] = pool.runner(name).run(["uname", "-srn"]).stdout_text.strip()
                row["ok"] = True
            except BakError as exc:
                row["error"] = exc.message
                outcome.failed(exc)
            outcome.result["hosts"].append(row)
    return outcome


def _configured_host(config, name: str):
    from bak.errors import BadInput

    if name not in config.hosts:
        raise BadInput(f"no host named {name!r} in the config", where="hosts",
                       hint="Known hosts: " + (", ".join(sorted(config.hosts)) or "none"))
    return config.hosts[name]


# --- journal -----------------------------------------------------------------------------
def _human_log(result: dict) -> None:
    from bak.report import human_size, short_time, table

    table("Journal (times in UTC)", ["id", "started", "kind", "target", "status", "bytes"],
          [[o["id"], short_time(o["started_at"]), o["kind"], o["target"], o["status"], human_size(o["bytes"])]
           for o in result["operations"]])
    _problems_below((f"{o['target']} #{o['id']}", (o["error_tail"] or "").strip().splitlines()[-1:])
                    for o in result["operations"] if o["error_tail"])


def _problems_below(found) -> None:
    """Long texts under the table instead of in it, each said once with what it concerns:
    `3-2-1 not met: missing 1 offsite (db, files)`."""
    from bak.report import say

    grouped: dict[str, list[str]] = {}
    for who, texts in found:
        for text in texts:
            grouped.setdefault(text, []).append(who)
    for text, whom in grouped.items():
        say(f"- {text} ({', '.join(dict.fromkeys(whom))})")


@cli.command("log", context_settings=CONTEXT)
@click.option("--target", help="Only this target.")
@click.option("--kind", type=click.Choice(["create", "verify", "restore", "drill", "prune", "discover", "sync", "check"]),
              help="Only this kind (check: a restic repository's check).")
@click.option("--since", help="Only operations started on or after this date (YYYY-MM-DD or ISO time, UTC).")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True,
              help="Show at most this many operations.")
@action("log", human=_human_log)
def log_command(target, kind, since, limit, config):
    """Show the journal of operations, newest first."""
    from bak.journal import Journal
    from bak.paths import state_dir
    from bak.report import Outcome

    if not (state_dir() / "journal.sqlite").exists():
        return Outcome({"operations": []})  # nothing journaled yet: reading creates nothing
    journal = Journal.default()
    try:
        return Outcome({"operations": journal.query(target=target, kind=kind, since=_since(since), limit=limit)})
    finally:
        journal.close()


def _since(text: str | None) -> str | None:
    from bak.errors import BadInput

    if not text:
        return None
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise BadInput(f"--since {text!r} is not a date (YYYY-MM-DD) or ISO time", where="--since") from None


# --- prune -------------------------------------------------------------------------------
def _human_prune(result: dict) -> None:
    from bak.report import human_size, say, table

    if "decisions" in result:
        _human_simulation(result)
        return
    for entry in result["targets"]:
        rows = [[s["store"], d["name"], "keep" if d["keep"] else "REMOVE", d["reason"], human_size(d["size"])]
                for s in entry["stores"] for d in s["decisions"]]
        rows += [[s["store"], p, "REMOVE", "stale partial (killed run)", ""] for s in entry["stores"] for p in s["stale_partials"]]
        rows += [[s["store"], f, "keep", "foreign file (never pruned)", ""] for s in entry["stores"] for f in s["foreign"]]
        rows += [[s["store"], c["name"], "REMOVE", c["reason"], human_size(c["size"])]
                 for s in entry["stores"] for c in s.get("safety_copies", [])]
        table(f"{entry['target']} ({entry['status']}, policy {entry['policy'] or 'keep all'})",
              ["store", "backup", "action", "reason", "size"], rows)
    verb = "would remove" if result["dry_run"] else "removed"
    total = sum(e["removed"] for e in result["targets"])
    size = sum(e["removed_bytes"] for e in result["targets"])
    say(f"{verb} {total} backup(s), {human_size(size)}")


def _human_simulation(result: dict) -> None:
    """A calendar: one line per ISO week, a letter per day for the rule that kept a backup there."""
    from datetime import date

    from bak.report import say

    by_day: dict = {}
    for d in result["decisions"]:
        day = date.fromisoformat(d["when"][:10])
        mark = d["reason"].split()[0][0] if d["keep"] else "."
        if by_day.get(day, ".") == ".":
            by_day[day] = mark
    if not by_day:
        say("no backups")
        return
    say("week      Mo Tu We Th Fr Sa Su   (l=last h=hourly d=daily w=weekly m=monthly y=yearly .=removed)")
    weeks: dict = {}
    for day, mark in by_day.items():
        weeks.setdefault(day.isocalendar()[:2], {})[day.isoweekday()] = mark
    for (year, week) in sorted(weeks, reverse=True):
        days = weeks[(year, week)]
        if all(m == "." for m in days.values()):
            continue
        say(f"{year}-W{week:02d}  " + " ".join(f" {days.get(i, ' ')}" for i in range(1, 8)))
    say(f"kept {result['kept']} of {result['total']}")


@cli.command("prune", context_settings=CONTEXT)
@click.option("--target", "-t", "targets", multiple=True, is_eager=True,
              help="Target to prune (repeatable); default: all enabled targets.")
@click.option("--all", "all_targets", is_flag=True, callback=_all_or_named,
              help="All enabled targets (the default when no --target is given).")
@click.option("--dry-run", is_flag=True, help="Show exactly what would be removed; remove nothing.")
@click.option("--force", is_flag=True, help="Prune even a stale target (newest backup older than 2x its interval).")
@click.option("--simulate", is_flag=True, help="Simulate a policy on timestamps or file names read from stdin, or on --every/--days.")
@click.option("--policy", "policy_name", help="With --simulate: a policy from the config.")
@click.option("--keep-last", type=click.IntRange(0), help="With --simulate: policy option.")
@click.option("--keep-hourly", type=click.IntRange(0), help="With --simulate: policy option.")
@click.option("--keep-daily", type=click.IntRange(0), help="With --simulate: policy option.")
@click.option("--keep-weekly", type=click.IntRange(0), help="With --simulate: policy option.")
@click.option("--keep-monthly", type=click.IntRange(0), help="With --simulate: policy option.")
@click.option("--keep-yearly", type=click.IntRange(0), help="With --simulate: policy option.")
@click.option("--every", help="With --simulate: generate a backup every DURATION (e.g. 6h) ...")
@click.option("--days", type=click.IntRange(1, 36500), default=400, show_default=True, help="... over this many days.")
@click.option("--safety-older-than", "safety_age", metavar="DURATION",
              help="Also remove safety copies (taken before forced restores) older than DURATION, e.g. 30d.")
@action("prune", needs_config="lazy", human=_human_prune, rows=True)
def prune_command(targets, all_targets, dry_run, force, simulate, policy_name, every, days, safety_age, load_config, **keeps):
    """Remove old backups by each target's retention policy (Proxmox prune semantics).

    Never removes the newest good backup, a protected or foreign file, or anything of a
    stale target without --force. Run with --dry-run first.
    """
    from bak import prune

    if simulate:
        return prune.simulate(_simulation_policy(policy_name, keeps, load_config), _simulation_times(every, days))
    if policy_name or every or any(v is not None for v in keeps.values()):
        raise _bad("--policy, --keep-* and --every only apply with --simulate", "--simulate")
    config = load_config()
    return prune.prune(config, config.select(targets), dry_run=dry_run, force=force,
                       safety_age=_duration(safety_age, "--safety-older-than") if safety_age else None)


def _duration(text: str, where: str):
    from bak.config import DURATION, parse_duration

    if not DURATION.fullmatch(text):
        raise _bad(f"{text[:40]!r} is not a duration like 30m, 6h, 1d or 1w (at most 6 digits)", where)
    return parse_duration(text)


def _simulation_policy(policy_name, keeps, load_config) -> dict:
    given = {k: v for k, v in keeps.items() if v is not None}
    if policy_name:
        config = load_config()
        if policy_name not in config.policies:
            raise _bad(f"no policy named {policy_name!r}", "--policy")
        return {**config.policies[policy_name], **given}
    if not given:
        raise _bad("--simulate needs a policy: --policy NAME or --keep-* options", "--simulate")
    return given


SIMULATED_MAX = 200_000  # backups a simulation may generate or read


def _simulation_times(every, days):
    from bak import prune

    if every:
        step = _duration(every, "--every")
        count = days * 86400 // int(step.total_seconds())
        if count > SIMULATED_MAX:
            raise _bad(f"a backup every {every} for {days} days is {count} backups; a simulation takes at most "
                       f"{SIMULATED_MAX}", "--every")
        now = datetime.now().replace(second=0, microsecond=0)
        return [(when.isoformat(), when) for when in prune.generated_times(step, days, now)]
    stdin = click.get_binary_stream("stdin")
    if stdin.isatty():
        raise _bad("--simulate reads timestamps or file names from stdin, or give --every", "--every")
    data = stdin.read(64 * SIMULATED_MAX + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"stdin is not UTF-8 text (byte {exc.start}); give one ISO time or backup name per line", "stdin") from None
    lines = text.splitlines()
    if len(data) > 64 * SIMULATED_MAX or len(lines) > SIMULATED_MAX:
        raise _bad(f"stdin holds more than {SIMULATED_MAX} lines; a simulation takes at most that many", "stdin")
    return prune.parse_times(lines)


def _bad(message: str, where: str):
    from bak.errors import BadInput

    return BadInput(message, where=where)


# --- create / verify / restore / list -------------------------------------------------------
def _progress(message: str) -> None:
    if not _OUTPUT["json"]:
        click.echo(message, err=True)


def _human_create(result: dict) -> None:
    from bak.report import human_size, table

    table("Backups made" if not result["dry_run"] else "Backups planned",
          ["target", "method", "status", "backup", "size", "copies", "error"],
          [[t["target"], t["method"], t.get("status"), t.get("name"), human_size(t.get("size")),
            ", ".join(f"{c['store']}:{'ok' if c['ok'] else 'FAILED'}" for c in t.get("copies", [])) or ", ".join(t["destinations"]),
            t.get("error")] for t in result["targets"]])


def target_options(fn):
    fn = click.option("--all", "all_targets", is_flag=True, callback=_all_or_named,
                      help="All enabled targets (the default without --target).")(fn)
    return click.option("--target", "-t", "targets", multiple=True, is_eager=True, help="Target name (repeatable).")(fn)


@cli.command("create", context_settings=CONTEXT)
@target_options
@click.option("--schedule", "schedule_name", help="Run a configured schedule: its targets, its pings, its notifications.")
@click.option("--dry-run", is_flag=True, help="Show what would be backed up; do nothing.")
@action("create", human=_human_create)
def create_command(targets, all_targets, schedule_name, dry_run, config):
    """Back up targets now (each under its lock, journaled, written atomically to every destination)."""
    from bak import actions
    from bak.schedule import schedule_for

    ping_url = None
    if schedule_name:
        schedule = schedule_for(config, schedule_name)
        targets, ping_url = schedule.targets, schedule.ping_url
    return actions.create(config, config.select(targets), dry_run=dry_run, progress=_progress, ping_url=ping_url)


def _human_verify(result: dict) -> None:
    from bak.report import human_size, table

    table("Verify", ["target", "store", "backup", "size", "checksum", "format", "result"],
          [[r["target"], r["store"], r["name"], human_size(r.get("size")), r.get("checksum"), r.get("format"),
            "ok" if r["ok"] else f"FAILED: {r.get('error')}"] for r in result["checked"]])


@cli.command("verify", context_settings=CONTEXT)
@target_options
@click.option("--latest", "mode", flag_value="latest", default=True, help="The newest backup on each destination (default).")
@click.option("--all-backups", "mode", flag_value="all", help="Every backup.")
@click.argument("names", nargs=-1, metavar="[BACKUP_NAME]...")
@action("verify", human=_human_verify, rows=True)
def verify_command(targets, all_targets, mode, names, config):
    """Check backups: sha256 against the sidecar plus the format's own full read, files in parallel.

    BACKUP_NAME: check only the backups with these file names (as `bak list` shows them).
    """
    from bak import actions

    return actions.verify(config, config.select(targets), every=mode == "all", names=names, progress=_progress)


def _human_restore(result: dict) -> None:
    from bak.report import say

    if result["dry_run"]:
        say(f"would restore {result['backup']} from {result['store']} into {result['into'] or 'a new place beside the original'}")
        if (result.get("checks") or {}).get("effect"):
            say(result["checks"]["effect"], label="  ")
        return
    where = result.get("database") or result.get("volume") or result.get("path")
    safety = result.get("safety_dump") or result.get("safety_backup") or result.get("safety_snapshot")
    say(f"restored {result['backup']}" + (f" ({result['file']})" if result.get("file") else "")
        + f" from {result['store']} into {where} in {result['duration_s']}s"
        + (f" (replaced; safety copy {safety})" if result.get("replaced") else ""))


def restore_options(fn, single_file: bool = True):
    for decorator in reversed([
        click.option("--target", "-t", "target_name", required=True, help="Target to restore."),
        click.option("--backup", "backup_name", help="Backup file name (default: the newest)."),
        click.option("--from", "store_name", help="Destination to read it from (default: the newest copy anywhere)."),
        click.option("--into", help="Restore under this name (default: a new name beside the original)."),
        click.option("--force", is_flag=True, help="Replace an existing database/folder, after a safety copy."),
        click.option("--dry-run", is_flag=True, help="Show what would be restored where; change nothing."),
        click.option("--jobs", "-j", type=click.IntRange(1, 64), help="Parallel restore jobs (pg custom dumps)."),
        click.option("--no-owner", is_flag=True, help="Skip restoring object ownership (pg)."),
        *([click.option("--file", "single_file", help="Restore only this path from a file-tree snapshot.")]
          if single_file else []),
    ]):
        fn = decorator(fn)
    return fn


@cli.command("restore", context_settings=CONTEXT)
@restore_options
@action("restore", human=_human_restore)
def restore_command(target_name, backup_name, store_name, into, force, dry_run, jobs, no_owner, single_file, config):
    """Restore a backup beside the original (never over it without --force)."""
    from bak import actions

    return actions.restore(config, config.target(target_name), name=backup_name, store_name=store_name, into=into,
                           force=force, dry_run=dry_run,
                           options={"jobs": jobs, "no_owner": no_owner, "file": single_file})


def _human_list(result: dict) -> None:
    """A table per target (its name and totals as the title), one line per backup; what a row would
    need a long note for is said under its table."""
    from bak.report import human_size, say, short_time, table

    for summary in result["targets"]:
        rows = [b for b in result["backups"] if b["target"] == summary["target"]]
        if not rows:
            continue
        table(f"{summary['target']}: {summary['backups']} backup(s), {human_size(summary['bytes'])}",
              ["store", "backup", "when (local)", "size"],
              [[b["store"], b["name"], short_time(b["when"]), human_size(b["size"])] for b in rows])
        for note, flagged in (("no checksum sidecar: never trust it unverified", [b for b in rows if not b["checksum"]]),
                              ("protected: prune never removes it", [b for b in rows if b["protected"]])):
            if flagged:
                say(f"- {note}: " + ", ".join(f"{b['store']}:{b['name']}" for b in flagged))
    if result["partials"]:
        table("Leftovers of interrupted runs", ["target", "store", "name"],
              [[p["target"], p["store"], p["name"]] for p in result["partials"]])
    if result["foreign"]:
        table("Foreign files (never pruned)", ["store", "folder", "name"],
              [[f["store"], f["folder"], f["name"]] for f in result["foreign"]])
    if result.get("restore_leftovers"):
        table("Left by interrupted restores and drills (the next one of the target removes them)",
              ["target", "kind", "left", "interrupted at"],
              [[r["target"], r["kind"], r["where"], r["interrupted_at"]] for r in result["restore_leftovers"]])
    if result["safety_copies"]:
        table("Safety copies (taken before forced restores; never restored by default)", ["target", "store", "name", "when"],
              [[c["target"], c["store"], f"{c['folder']}/{c['name']}", short_time(c["when"])] for c in result["safety_copies"]])


@cli.command("list", context_settings=CONTEXT)
@target_options
@click.option("--type", "method", type=click.Choice(["vzdump", "pg_dump", "rsync", "vault", "docker_volume", "config"]),
              help="Only targets of this method.")
@click.option("--host", help="Only targets on this host.")
@click.option("--vmid", type=int, help="Only this Proxmox VMID.")
@click.option("--destination", help="Only this destination.")
@click.option("--since", type=click.DateTime(), help="Only backups made at or after this local time.")
@click.option("--until", type=click.DateTime(), help="Only backups made at or before this local time.")
@action("list", human=_human_list, rows=True)
def list_command(targets, all_targets, method, host, vmid, destination, since, until, config):
    """List backups per target and destination, with leftovers and foreign files."""
    from bak import actions

    filters = {"method": method, "host": host, "vmid": vmid, "destination": destination, "since": since, "until": until}
    return actions.listing(config, config.select(targets), filters)


_STATE_STYLE = {"OK": "green", "LATE": "yellow", "STALE": "red", "MISSING": "red", "UNKNOWN": "red", "FAILING": "red bold"}


def _human_status(result: dict) -> None:
    from bak.forecast import outlook_text
    from bak.report import human_size, say, table

    rows = []
    for t in result["targets"]:
        newest = t.get("newest") or {}
        change = f" {t['size_change_pct']:+.0f}%" if t.get("size_change_pct") else ""
        verify = (t["last_verify"] or {}).get("status", "never")
        drill = (t["last_drill"] or {}).get("status", "never") + ("!" if t["drill_overdue"] else "")
        proven = t.get("proven_rpo")
        rpo = "[red]none[/]" if proven is None else (
            _hours_text(proven["age_h"]) if proven["ok"] else f"[red]{_hours_text(proven['age_h'])}[/]")
        rows.append([t["target"], f"[{_STATE_STYLE[t['state']]}]{t['state']}[/]",
                     _hours_text(newest["age_h"]) if newest else "-", human_size(newest.get("size")) + change,
                     len(t["copies"]["destinations"]), "ok" if t["copies"]["ok"] else "[yellow]gap[/]",
                     verify, drill, rpo])
    table("Targets (drill!: overdue)", ["target", "state", "age", "size", "copies", "3-2-1", "verify", "drill", "RPO"],
          rows)  # each problem is an error, said once for all its targets after the output
    colour = {"ok": "green", "warn": "yellow"}
    table("Destinations", ["destination", "kind", "host", "medium", "used", "free", "level", "forecast"],
          [[d["destination"], d["kind"], d["host"], d.get("medium") or "-",
            f"{d['used_percent']}%" if "used_percent" in d else "-", human_size(d.get("free")),
            f"[{colour.get(d['level'], 'red')}]{d['level']}[/]",
            outlook_text(d["forecast"]) if "forecast" in d else "-"] for d in result["destinations"]])
    say(result["summary"])


def _hours_text(hours: float) -> str:
    return f"{hours / 24:.1f}d" if hours >= 48 else f"{hours:.1f}h"


@cli.command("status", context_settings=CONTEXT)
@action("status", human=_human_status)
def status_command(config):
    """Dashboard: each target's age vs interval, size trend, 3-2-1 copies, last verify and drill, proven RPO; free space."""
    from bak.status import status

    return status(config)


def _human_metrics(result: dict) -> None:
    from bak.report import say

    if result["path"]:
        say(f"wrote {result['path']}: {result['samples']} samples of {result['families']} metrics")
    else:
        click.echo(result["text"], nl=False)


@cli.command("metrics", context_settings=CONTEXT)
@click.option("--textfile", "textfile_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write bak.prom into this folder (node_exporter's textfile collector), atomically. Default: "
                   "notify.prometheus_textfile_dir; without either, print the metrics.")
@action("metrics", human=_human_metrics)
def metrics_command(textfile_dir, config):
    """Prometheus metrics of every target and destination: last success, age, size, duration, verify and drill,
    proven RPO, free space, failures. `bak create` rewrites the file after each run when the config names it."""
    from bak.metrics import metrics

    return metrics(config, textfile_dir)


def _human_report(result: dict) -> None:
    from bak.report import human_size, say

    say(f"wrote {result['path']} ({human_size(result['bytes'])}): open it in a browser")
    say(result["summary"])


@cli.command("report", context_settings=CONTEXT)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this file (default: report.html in bak's state folder).")
@click.option("--days", type=click.IntRange(1, 366), default=31, show_default=True,
              help="How many days the calendars show.")
@click.option("--force", is_flag=True, help="Replace the --html file if it exists (only ever a regular file).")
@action("report", human=_human_report)
def report_command(html_path, days, force, config):
    """One self-contained HTML file: per target a calendar of its backups (kept or to be pruned, verified,
    drilled, failed runs), size and run length over time; destinations' use and when they fill; 3-2-1; the
    last operations. Nothing is fetched when it is opened."""
    from bak.html_report import report

    return report(config, html_path, days, force=force)


# --- PostgreSQL ------------------------------------------------------------------------------
@cli.group("pg", context_settings=CONTEXT)
def pg_group():
    """PostgreSQL: dump, verify, restore beside, restore drill."""


def _pg_targets(config, names):
    from bak.errors import BadInput

    chosen = config.select(names)
    wrong = [t.name for t in chosen if t.method != "pg_dump"]
    if names and wrong:
        raise BadInput(f"not pg_dump targets: {', '.join(wrong)}", where="--target")
    return [t for t in chosen if t.method == "pg_dump"]


@pg_group.command("dump")
@target_options
@action("pg dump", human=_human_create)
def pg_dump_command(targets, all_targets, config):
    """Dump PostgreSQL targets now (same as `bak create` for them)."""
    from bak import actions

    return actions.create(config, _pg_targets(config, targets), progress=_progress)


@pg_group.command("verify")
@target_options
@click.option("--all-backups", "every", is_flag=True, help="Every dump, not only the newest.")
@action("pg verify", human=_human_verify, rows=True)
def pg_verify_command(targets, all_targets, every, config):
    """sha256 plus a full read (pg_restore -f /dev/null; gzip -t for .sql.gz)."""
    from bak import actions

    return actions.verify(config, _pg_targets(config, targets), every=every)


@pg_group.command("restore")
@functools.partial(restore_options, single_file=False)
@action("pg restore", human=_human_restore)
def pg_restore_command(target_name, backup_name, store_name, into, force, dry_run, jobs, no_owner, config):
    """Restore a dump into a new database ({db}_restored_{time}) or --into NAME."""
    from bak import actions

    _pg_targets(config, (target_name,))
    return actions.restore(config, config.target(target_name), name=backup_name, store_name=store_name, into=into,
                           force=force, dry_run=dry_run, options={"jobs": jobs, "no_owner": no_owner})


def _human_drill(result: dict) -> None:
    from bak.report import table

    table("Restore drills", ["target", "backup", "restore time", "checks", "result"],
          [[d["target"], d.get("backup"), f"{d.get('restore_duration_s', '-')}s",
            ", ".join(f"{c['check'][:30]}:{'ok' if c['ok'] else 'FAIL'}" for c in d.get("checks", [])),
            "PASSED" if d.get("passed") else f"FAILED {d.get('error', '')}"] for d in result["drills"]])


@pg_group.command("drill")
@target_options
@action("pg drill", human=_human_drill)
def pg_drill_command(targets, all_targets, config):
    """Restore the newest dump into a scratch database, compare row counts, run sanity queries, drop it."""
    from bak import actions

    return actions.drill(config, _pg_targets(config, targets))


# --- demo --------------------------------------------------------------------------------
@cli.command("demo", context_settings=CONTEXT)
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
              help="Empty folder for the lab (default: a new temp folder).")
@click.option("--install-missing", "install", is_flag=True,
              help="First install what the demo uses and this machine lacks (rsync, git, PostgreSQL server) with "
                   "apt-get, when run as root; otherwise the demo names the command.")
@action("demo", needs_config=False)
def demo_command(folder, install):
    """Build a sandbox lab (loopback and one folder only) and run backups end to end in it.

    It prints each step as it runs; with --json, one envelope with each step's outcome at the end."""
    from bak import demo
    from bak.report import Outcome

    narrator = demo.Narrator(as_json=_OUTPUT["json"])
    code = demo.run(folder, install, narrator)
    outcome = Outcome(demo.outcome(narrator, code))
    outcome.worst_exit = code
    return outcome


@cli.command("drill", context_settings=CONTEXT)
@target_options
@click.option("--from", "store_name", help="Drill the newest backup on this destination (default: the newest anywhere).")
@click.option("--boot", is_flag=True, help="Proxmox guests: also start the scratch copy (links down), wait for its guest "
                                            "agent up to boot_timeout and run boot_check inside (as boot_drill: true does).")
@action("drill", human=_human_drill)
def drill_command(targets, all_targets, store_name, boot, config):
    """Restore drill for any target: restore the newest backup somewhere scratch, check it, remove it."""
    from bak import actions

    return actions.drill(config, config.select(targets), store_name, boot=boot)


# --- disaster recovery ---------------------------------------------------------------------
@cli.group("dr", context_settings=CONTEXT)
def dr_group():
    """Disaster recovery of the whole homelab: the ordered recovery plan, and its drill."""


def _human_plan(result: dict) -> None:
    from bak.dr.runbook import duration_text, rto_text
    from bak.report import say, table

    table("Recovery plan", ["step", "target", "restores", "after", "backup", "from", "checked", "expected"],
          [[s["step"], s["target"], s["restores"], ", ".join(a["target"] for a in s["after"]) or "-",
            (s["backup"] or {}).get("name", "[red]NONE[/]"),
            f"{s['source']['destination']} ({'off-site' if s['source']['offsite'] else 'on-site'})" if s["source"] else "-",
            "-" if not s["backup"] else ("booted" if s["backup"].get("booted") else "drilled") if s["backup"]["drilled"]
            else "verified" if s["backup"]["checked"]
            else "[yellow]never[/]", duration_text((s["estimate"] or {}).get("seconds"))] for s in result["steps"]])
    rto = rto_text(result)
    say(rto[:1].upper() + rto[1:] + ".")
    say(f"runbook written to {result['runbook']}" if result.get("runbook") else
        "The commands of each step, bak's and by hand: bak dr plan --runbook FILE.md (or .html).")


@dr_group.command("plan")
@click.option("--runbook", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the plan as a runbook to this file: Markdown (.md) or one self-contained page (.html).")
@click.option("--force", is_flag=True, help="Replace the --runbook file if it exists (only ever a regular file).")
@action("dr plan", human=_human_plan)
def dr_plan_command(runbook, force, config):
    """The ordered recovery of the whole homelab: for each target the newest checked backup, where its copies
    are, the commands (bak's and by hand) and the expected time from measured drills; the total RTO."""
    from bak.dr.plan import recovery_plan

    return recovery_plan(config, runbook, force=force)


def _human_dr_drill(result: dict) -> None:
    from bak.dr.runbook import duration_text
    from bak.report import say, table

    def verdict(step):
        if step["passed"] is None:
            return f"skipped: {step['skipped']}"
        return "[green]PASSED[/]" if step["passed"] else f"[red]FAILED[/] {step.get('error', '')}"

    table("Disaster recovery drill", ["step", "target", "backup", "from", "result", "restore", "expected", "difference"],
          [[s["step"], s["target"], s.get("backup") or "-", s.get("store") or "-", verdict(s),
            duration_text(s.get("restore_s")), duration_text(s["estimate_s"]),
            "-" if s.get("difference_s") is None else f"{s['difference_s']:+.1f}s"] for s in result["steps"]])
    expected = [s["estimate_s"] for s in result["steps"] if s["estimate_s"] is not None]
    say(f"{result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped; restores took "
        f"{duration_text(result['restore_s'])} in total ({duration_text(result['measured_s'])} with checks and "
        "clean-up); " + (f"the plan expected {duration_text(result['planned_rto_s'])}." if expected
                         else "the plan had no measured time yet: this drill gives it one."))


@dr_group.command("drill")
@click.option("--from", "store_name",
              help="Drill the newest backup on this destination for every target that has copies there (e.g. the "
                   "off-site one); default: the copy the plan restores from.")
@action("dr drill", human=_human_dr_drill)
def dr_drill_command(store_name, config):
    """Every target's restore drill in plan order, in scratch places removed after: pass or fail and measured
    restore time per step and in total, against the plan's estimate."""
    from bak.dr.drill import drill_all

    return drill_all(config, store_name, progress=_progress)


def _human_discover(result: dict) -> None:
    from bak.discover import label
    from bak.report import say, table

    if result["items"]:
        table("Found on the configured hosts", ["kind", "host", "name", "detail", "backed up by"],
              [[i["kind"], i["host"], i["name"], i.get("detail") or i.get("server") or i.get("cli") or "",
                ", ".join(i["covered_by"]) or "[red]NOTHING[/]"] for i in result["items"]])
    say(f"{result['unprotected']} of {len(result['items'])} item(s) unprotected"
        + (": " + "; ".join(label(i) for i in result["items"] if not i["covered_by"]) if result["unprotected"] else ""))


@cli.command("discover", context_settings=CONTEXT)
@action("discover", human=_human_discover)
def discover_command(config):
    """List the guests, databases and Docker volumes on the configured hosts, and flag those no target backs up."""
    from bak.discover import discover

    return discover(config)


def _human_bootstrap(result: dict) -> None:
    from bak.report import say

    say(f"recovered bak's config into {result['config']} and its journal ({result['operations']} operations) into "
        f"{result['journal']}, from the kit in {result['kit']} written {result['written_at']} by {result['written_by']}")
    for kept in result["kept"]:
        say(f"kept the one that was here as {kept}")
    say("next: bak status, then bak dr plan")


@cli.command("bootstrap", context_settings=CONTEXT)
@click.option("--from", "source", required=True,
              help="Root folder of a destination that holds the recovery kit: a path here, or user@host:/path over SSH.")
@click.option("--port", type=click.IntRange(1, 65535), help="SSH port of --from (default 22).")
@click.option("--key", type=click.Path(dir_okay=False), help="SSH private key for --from.")
@click.option("--fingerprint", help="Trust this SHA256:... host key for --from (bak's known_hosts is empty on a "
                                    "fresh machine); check it on the host first.")
@click.option("--force", is_flag=True, help="Replace a config or journal already here (each is kept beside, renamed).")
@action("bootstrap", needs_config=False, human=_human_bootstrap)
def bootstrap_command(source, port, key, fingerprint, force):
    """On a fresh machine: bak's config, journal and known_hosts back from the recovery kit that `bak create`
    keeps beside the backups. Secrets are not in it: the config points to them."""
    from bak.dr.kit import SSH_SOURCE, bootstrap
    from bak.run.hosts import check_fingerprint

    if fingerprint is not None:
        check_fingerprint(fingerprint)
    if not SSH_SOURCE.match(source):
        given = [name for name, value in (("--port", port), ("--key", key), ("--fingerprint", fingerprint)) if value]
        if given:
            raise _bad(f"{', '.join(given)} apply to an SSH source (user@host:/path), not to a folder here", given[0])
    return bootstrap(source, port=port or 22, key=key, fingerprint=fingerprint, force=force)


# --- schedule ------------------------------------------------------------------------------
def _human_schedule(result: dict) -> None:
    from bak.report import say, table

    table("Schedules", ["schedule", "targets", "when", "backend"],
          [[j["name"], ", ".join(j["targets"]), j["cron"] or "on each commit", j["backend"]] for j in result["jobs"]])
    verb = "would " if result["dry_run"] else ""
    for change in result["changes"]:
        state = "changed" if change["changed"] else "unchanged"
        say(f"{change['kind']:<9} {change['path']}: {verb}{'write' if change['changed'] else 'keep'} ({state})")
    for cmd in result["commands"]:
        say("run: " + " ".join(cmd))


def _schedule_action(mode: str, config, dry_run: bool, crontab_file, unit_dir, task_dir):
    from bak import paths, schedule
    from bak.report import Outcome

    state = paths.state_dir()
    logs = paths.ensure_private_dir(state / "logs")
    planned, commands = schedule.changes(
        config, remove=mode == "remove", config_path=str(Path(config.source).resolve()), crontab_file=crontab_file,
        unit_dir=unit_dir or Path.home() / ".config" / "systemd" / "user", task_dir=task_dir or state / "windows-tasks",
        log_dir=str(logs))
    if mode != "show" and not dry_run:
        schedule.apply(planned, crontab_file)
    jobs = [{"name": j.name, "targets": list(j.targets), "cron": j.cron, "on_commit": j.on_commit, "backend": j.backend}
            for j in schedule.jobs(config)]
    return Outcome({"mode": mode, "dry_run": dry_run or mode == "show", "jobs": jobs, "changes": planned,
                    "commands": commands})


def schedule_options(mode: str):
    """The options of `schedule show/install/remove`, each worded for what it does in that mode."""
    verb = {"show": "Show what install would write to", "install": "Write to", "remove": "Remove bak's entries from"}[mode]

    def decorate(fn):
        for decorator in reversed([
            *([click.option("--dry-run", is_flag=True, help="Print exactly what would change; change nothing.")]
              if mode != "show" else []),
            click.option("--crontab-file", type=click.Path(dir_okay=False, path_type=Path),
                         help=f"{verb} this cron file (e.g. /etc/cron.d/bak) instead of the user crontab."),
            click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path),
                         help=f"{verb} this systemd unit folder instead of ~/.config/systemd/user."),
            click.option("--task-dir", type=click.Path(file_okay=False, path_type=Path),
                         help=f"{verb} this folder of Windows Task Scheduler XML instead of the state folder."),
        ]):
            fn = decorator(fn)
        return fn

    return decorate


@cli.group("schedule", context_settings=CONTEXT)
def schedule_group():
    """Cron lines, systemd timers, Windows Task Scheduler XML and git hooks from the config's schedules."""


@schedule_group.command("show")
@schedule_options("show")
@action("schedule show", human=_human_schedule)
def schedule_show(crontab_file, unit_dir, task_dir, config):
    """Show the schedules and what install would write (changes nothing)."""
    return _schedule_action("show", config, True, crontab_file, unit_dir, task_dir)


@schedule_group.command("install")
@schedule_options("install")
@action("schedule install", human=_human_schedule)
def schedule_install(dry_run, crontab_file, unit_dir, task_dir, config):
    """Install every schedule (idempotent: a second install changes nothing)."""
    return _schedule_action("install", config, dry_run, crontab_file, unit_dir, task_dir)


@schedule_group.command("remove")
@schedule_options("remove")
@action("schedule remove", human=_human_schedule)
def schedule_remove(dry_run, crontab_file, unit_dir, task_dir, config):
    """Remove bak's schedules (only bak's lines and files; nothing else)."""
    return _schedule_action("remove", config, dry_run, crontab_file, unit_dir, task_dir)


# --- wizard --------------------------------------------------------------------------------
@cli.group("wizard", context_settings=CONTEXT)
def wizard_group():
    """Set up a 3-2-1 backup config, or get strategy advice on the current one."""


def _human_setup(result: dict) -> None:
    from bak.report import say

    say(f"wrote {result['path']} ({len(result['targets'])} targets, {len(result['schedules'])} schedules)"
        + (f"; the previous config is kept as {result['previous']}" if result["previous"] else ""))
    say("next: bak config check, then bak schedule install --dry-run")


@wizard_group.command("setup")
@click.option("--answers", type=click.Path(path_type=Path),
              help="YAML answers (for the agent and scripts: no prompts).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Where to write (default: the config path).")
@click.option("--force", is_flag=True, help="Replace an existing config (the old one is kept beside it).")
@action("wizard setup", needs_config=False, human=_human_setup)
def wizard_setup(answers, output, force):
    """Write a config for a 3-2-1 strategy from answers (a file, or prompts in a terminal)."""
    from bak import paths
    from bak.config import yamlfile
    from bak.errors import BadInput
    from bak.wizard import prompt_answers, write_config

    if answers:
        data = yamlfile.load(answers, "answers file")
    elif sys.stdin.isatty():
        data = prompt_answers()
    else:
        raise BadInput("the wizard needs --answers FILE when it is not run in a terminal", where="--answers",
                       hint="Write the answers as YAML (see references/config.md and the wizard section of SKILL.md).")
    return write_config(data, output or paths.config_file(), force)


def _human_strategy(result: dict) -> None:
    from bak.report import human_size, say, table

    table("3-2-1 per data item", ["data", "target", "copy 1 (original)", "copy 2 (local)", "copy 3 (offsite)", "media",
                                  "kept", "estimate", "3-2-1"],
          [[r["data"], r["target"], r["original"], ", ".join(r["local"]) or "-", ", ".join(r["offsite"]) or "-",
            ", ".join(r["media"]), r["kept_copies"], human_size(r.get("estimate_bytes")),
            "ok" if r["ok"] else "MISSING " + ", ".join(r["gaps"])] for r in result["rows"]])
    for rec in result["recommendations"]:
        say(f"- {rec['target']}: {rec['advice']}")
    if result["estimate_total_bytes"] is not None:
        say(f"estimated storage at steady state: {human_size(result['estimate_total_bytes'])}")


@wizard_group.command("strategy")
@click.option("--measure", is_flag=True, help="Measure sizes and change rates from existing backups (connects to hosts).")
@action("wizard strategy", human=_human_strategy)
def wizard_strategy(measure, config):
    """3-2-1 check per data item, frequency and retention advice, storage estimate."""
    from bak import strategy

    return strategy.analyse(config, strategy.measure(config) if measure else None)


# --- doctor --------------------------------------------------------------------------------
def _human_doctor(result: dict) -> None:
    from bak.report import table

    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    table("bak doctor", ["check", "subject", "result", "detail", "fix"],
          [[c["check"], c["subject"], f"[{colour[c['level']]}]{c['level']}[/]", c["detail"], c["fix"] or ""]
           for c in result["checks"]])


@cli.command("doctor", context_settings=CONTEXT)
@action("doctor", human=_human_doctor)
def doctor_command(config):
    """Troubleshooting checks: SSH, Proxmox storage and locks, PostgreSQL, tools, space, what to prune."""
    from bak.doctor import doctor

    return doctor(config)


# --- Claude Code skill ---------------------------------------------------------------------
@cli.group("skill", context_settings=CONTEXT)
def skill_group():
    """Install the skill and its /bak-* commands into Claude Code under their plain names."""


def _human_skill(result: dict) -> None:
    from bak.report import say

    if result["action"] == "uninstall":
        say(f"removed {result['removed']} file(s) of bak's skill from {result['root']}")
        return
    say(f"installed into {result['root']} ({result['scope']} scope): {result['written']} file(s) written, "
        f"{result['unchanged']} unchanged")
    say("in Claude Code (a new session, or after /reload-skills): " + " ".join(result["commands"])
        + f"; the skill itself is {result['skill']}")


@skill_group.command("install")
@click.option("--project", type=click.Path(file_okay=False, path_type=Path),
              help="Install into this project's .claude folder (for that project only) instead of ~/.claude.")
@click.option("--uninstall", is_flag=True, help="Remove what an earlier install wrote; files edited since are kept.")
@action("skill install", needs_config=False, human=_human_skill)
def skill_install(project, uninstall):
    """Install the skill and its commands where Claude Code loads them as /bak-status, /bak-create, ...

    Added as a plugin, the same commands are namespaced: /backup-skill:bak-status. Idempotent; never
    overwrites a file it did not write.
    """
    from bak import skill

    return skill.uninstall(project) if uninstall else skill.install(project)


# --- off-site copies: restic repositories --------------------------------------------------------
@cli.group("destination", context_settings=CONTEXT)
def destination_group():
    """Set up a destination: create a restic repository (local path, sftp:, rest:, s3:)."""


def _human_destination_init(result: dict) -> None:
    from bak.report import say

    say(f"created the restic repository of {result['destination']} ({result['backend']}): {result['repository']}")


@destination_group.command("init")
@click.argument("name")
@action("destination init", human=_human_destination_init)
def destination_init(name, config):
    """Create the restic repository of destination NAME (refused if one is already there)."""
    from bak import repository

    return repository.init(config, name)


def _human_sync(result: dict) -> None:
    from bak.report import human_size, say, table

    rows = [[t["target"], c["name"], c["from"], "copied", human_size(c["size"])] for t in result["targets"] for c in t["copied"]]
    rows += [[t["target"], c["name"], c["from"], "would copy", human_size(c["size"])]
             for t in result["targets"] for c in t["planned"]]
    rows += [[t["target"], c["name"], c["from"], "FAILED", c["error"]] for t in result["targets"] for c in t["failed"]]
    table(f"Sync to {result['to']}", ["target", "backup", "from", "result", "size"], rows)
    present = sum(t["present"] for t in result["targets"])
    say(f"{'would copy' if result['dry_run'] else 'copied'} "
        f"{sum(len(t['planned']) for t in result['targets']) if result['dry_run'] else result['copied']} backup(s)"
        + ("" if result["dry_run"] else f", {human_size(result['bytes'])}") + f"; {present} already there")


@cli.command("sync", context_settings=CONTEXT)
@click.option("--to", "to", required=True, help="The restic destination to copy into (e.g. the off-site one).")
@target_options
@click.option("--since", type=click.DateTime(), help="Only backups made at or after this local time.")
@click.option("--limit-upload", "limit_upload", type=click.IntRange(1, 100000000), metavar="KIB",
              help="Upload at most this many KiB/s (restic --limit-upload).")
@click.option("--dry-run", is_flag=True, help="Show what would be copied; copy nothing.")
@action("sync", human=_human_sync, rows=True)
def sync_command(to, targets, all_targets, since, limit_upload, dry_run, config):
    """Copy backups already on a target's other destinations that the restic destination lacks (checked on the way)."""
    from bak.sync import sync

    return sync(config, targets, to, since=since, limit_upload_kib=limit_upload, dry_run=dry_run, progress=_progress)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="bak", standalone_mode=True)
    except SystemExit as exc:
        # click exits 2 on usage errors, matching our "bad input" code.
        raise SystemExit(exc.code if exc.code is not None else 0)


__all__ = ["cli", "main", "EXIT_BAD_INPUT"]
