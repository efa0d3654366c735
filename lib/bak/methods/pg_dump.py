"""PostgreSQL: pg_dump streamed into every destination, verify, restore beside, restore drill.

The dump and the per-table row counts see the same snapshot: a psql session exports it
(pg_export_snapshot), pg_dump runs with --snapshot, and the counts run in that session
while pg_dump works, so the drill can compare exact counts even on a live database.
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
import time
import zlib

from bak import naming
from bak.catalog import Backup, folder_of, safety_folder_of, scan
from bak.config import Target
from bak.errors import BadInput, BakError, CommandFailed, Refused, VerifyFailed
from bak.journal import Operation
from bak.methods.base import Context, Method, clear_leftovers, free_name
from bak.run.base import CHUNK, Runner
from bak.secrets import read_secret
from bak.stores import Store
from bak.stores.fanout import FanOut
from bak.verify import HashingReader, check_file, recorded_sha256

SPACE_FACTOR = 1.2
INCOMING_PREFIX = "bak_incoming_"  # the database a restore loads into, renamed to its name once complete
DRILL_PREFIX = "bak_drill_"        # a drill's scratch database
SNAPSHOT_WAIT_S = 60
# What a non-superuser cannot replay from a plain dump: ownership and privileges of other roles.
OWNERSHIP_ERROR = re.compile(r"must be (owner|member)|permission denied to (change default privileges|set role)|"
                             r"role \".*\" does not exist|must be able to SET ROLE")
FIELD = "\x1f"  # unit separator between psql output fields: never inside an identifier

USER_TABLES = ("FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
               "AND n.nspname NOT LIKE 'pg\\_toast%'")
ROW_COUNTS_SQL = ("SELECT 'rows', format('%I.%I', n.nspname, c.relname), "
                  "(xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname), "
                  "false, true, '')))[1]::text " + USER_TABLES + " AND c.relkind = 'r' ORDER BY 2;")
RESTORE_RIGHTS_SQL = ("SELECT current_user, (SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user), "
                      "EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db'), "
                      "coalesce((SELECT pg_has_role(current_user, datdba, 'MEMBER') FROM pg_database WHERE datname = :'db'), "
                      "false) OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);")
PRECHECK_SQL = ("SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), "
                "has_database_privilege(current_database(), 'CONNECT'), "
                "pg_database_size(current_database()), current_setting('server_version'), "
                "coalesce((SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') " + USER_TABLES +
                " AND NOT has_table_privilege(c.oid, 'SELECT')), ''), "
                "coalesce((SELECT sum(pg_table_size(c.oid)) " + USER_TABLES + "), 0);")


# --- argv builders (pure) ------------------------------------------------------------------
def tool(options: dict, name: str) -> str:
    return posixpath.join(options["bin_dir"], name) if options.get("bin_dir") else name


def connection(options: dict, database: str) -> list[str]:
    argv = ["-h", options["address"], "-p", str(options["port"])]
    if options.get("user"):
        argv += ["-U", options["user"]]
    return argv + ["-d", database]


def isready_argv(options: dict) -> list[str]:
    return [tool(options, "pg_isready"), "-h", options["address"], "-p", str(options["port"]), "-d", options["database"]]


def psql_argv(options: dict, database: str, variables: dict[str, str] | None = None, *, stop_on_error: bool = True) -> list[str]:
    argv = [tool(options, "psql"), *connection(options, database), "-w", "-X", "-A", "-t", "-q",
            "-F", FIELD, "-v", f"ON_ERROR_STOP={int(stop_on_error)}"]
    for key, value in (variables or {}).items():
        argv += ["-v", f"{key}={value}"]
    return argv


def dump_argv(options: dict, snapshot: str | None) -> list[str]:
    argv = [tool(options, "pg_dump"), *connection(options, options["database"]), "-w"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    return argv + (["-Fc"] if options["format"] == "custom" else ["-Fp", "-Z", "6"])


def globals_argv(options: dict, *, with_passwords: bool) -> list[str]:
    """Roles and tablespaces; role passwords need a superuser (they live in pg_authid)."""
    argv = [tool(options, "pg_dumpall"), "-h", options["address"], "-p", str(options["port"])]
    if options.get("user"):
        argv += ["-U", options["user"]]
    argv += ["-l", options["database"], "-w", "--globals-only"]
    return argv if with_passwords else [*argv, "--no-role-passwords"]


def restore_argv(options: dict, database: str, *, jobs: int = 1, no_owner: bool = False, no_privileges: bool = False,
                 path: str | None = None) -> list[str]:
    argv = [tool(options, "pg_restore"), *connection(options, database), "-w", "--exit-on-error"]
    if no_owner:
        argv.append("--no-owner")
    if no_privileges:
        argv.append("--no-privileges")
    if jobs > 1 and path:
        argv += ["-j", str(jobs)]
    return argv + (["--", path] if path else [])


def full_read_argv(options: dict) -> list[str]:
    """A full read of a custom dump from stdin (`--list` alone misses truncation)."""
    return [tool(options, "pg_restore"), "-f", "/dev/null"]


# --- connection and secrets ------------------------------------------------------------------
def recorded_row_counts(data: bytes) -> tuple[dict[str, int] | None, str | None]:
    """The row counts a dump's .meta.json recorded, read as untrusted input (the file has no checksum of its
    own and anyone with access to the destination can edit it): (counts, None), or (None, what is wrong)."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return None, "its .meta.json is not JSON"
    counts = meta.get("row_counts") if isinstance(meta, dict) else None
    if not isinstance(counts, dict):
        return None, "its .meta.json holds no row_counts object"
    wrong = [t for t, n in counts.items() if not isinstance(n, int) or isinstance(n, bool) or n < 0]
    if wrong:
        return None, f"its .meta.json holds a row count that is not a count ({str(wrong[0])[:80]!r})"
    return counts, None


def passfile_line(password: str) -> bytes:
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n".encode()


class Session:
    """How to reach one target's server: its runner and the environment that carries the secret."""

    def __init__(self, ctx: Context, target: Target):
        self.target = target
        self.options = target.options
        self.runner: Runner = ctx.hosts.runner(target.host)
        self._secret_cm = None
        self.env = {"PGCONNECT_TIMEOUT": "10", "PGAPPNAME": f"bak-{target.name}"}

    def __enter__(self) -> "Session":
        ref = self.options.get("password")
        if ref and "pgpass" in ref:
            path = ref["pgpass"]
            if self.target.host == "local":
                read_secret(ref, f"targets.{self.target.name}.pg_dump.password")
                from pathlib import Path

                path = str(Path(path).expanduser())
            elif path.startswith("~/"):
                path = path[2:]  # remote commands start in the home folder
            self.env["PGPASSFILE"] = path
        elif ref:
            password = read_secret(ref, f"targets.{self.target.name}.pg_dump.password")
            self._secret_cm = self.runner.secret_file(passfile_line(password))
            self.env["PGPASSFILE"] = self._secret_cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._secret_cm is not None:
            self._secret_cm.__exit__(*exc)

    def run(self, argv: list[str], **kwargs):
        return self.runner.run(argv, env=self.env, **kwargs)

    def sql(self, statement: str, database: str | None = None, variables: dict | None = None) -> list[list[str]]:
        out = self.run(psql_argv(self.options, database or self.options["database"], variables), stdin=statement.encode())
        return [line.split(FIELD) for line in out.stdout_text.splitlines() if line]


# libpq's words when no server answers (interfaces/libpq/fe-connect.c): the connection refused or timed out,
# no socket, a server starting or stopping.
SERVER_DOWN = re.compile(r"connection to server .* failed: (?:Connection refused|No such file or directory"
                         r"|Connection timed out|No route to host|timeout expired)|could not connect to server"
                         r"|the database system is (?:starting up|shutting down|in recovery mode)")


def not_ready(options: dict, target: Target, meaning: str, **extra) -> CommandFailed:
    """One cause, one code: whatever found the server down (pg_isready before a dump, psql before a
    restore or a drill) says it the same way."""
    return CommandFailed(f"PostgreSQL at {options['address']}:{options['port']} is not ready: {meaning}",
                         where=f"targets.{target.name}", code="pg_not_ready",
                         hint="Start the server, or check pg_dump.address/port (pg_isready -h ... -p ...).", **extra)


def explain_connection_failure(exc: CommandFailed, target: Target) -> BakError:
    text = exc.stderr_tail
    options = target.options
    where = f"targets.{target.name}"
    if SERVER_DOWN.search(text):
        last = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return not_ready(options, target, "no response" + (f" ({last[0][-160:]})" if last else ""), stderr_tail=text)
    if "password authentication failed" in text or "no password supplied" in text:
        return CommandFailed(f"PostgreSQL refused the password of role {options.get('user') or '(default)'}",
                             where=where, code="pg_auth", stderr_tail=text,
                             hint="Check the secret the config points to (pg_dump.password) and the role's password.")
    if re.search(r'database ".*" does not exist', text):
        return CommandFailed(f"database {options['database']!r} does not exist on {options['address']}:{options['port']}",
                             where=f"{where}.pg_dump.database", code="pg_no_database", stderr_tail=text,
                             hint="Check pg_dump.database; list databases with: psql -l")
    if "permission denied" in text:
        return CommandFailed(f"role lacks a privilege: {text.strip().splitlines()[-1]}", where=where, code="pg_privilege",
                             stderr_tail=text, hint="The role needs CONNECT on the database and SELECT on every table.")
    return exc


# --- the method -----------------------------------------------------------------------------
class GatedScript:
    """stdin for the snapshot session: the head now, the tail once the dump is done."""

    def __init__(self, head: str, tail: str):
        self.parts = [head.encode(), tail.encode()]
        self.gate = threading.Event()

    def read(self, n: int = CHUNK) -> bytes:
        if len(self.parts) == 2:
            return self.parts.pop(0)
        if self.parts:
            self.gate.wait()
            return self.parts.pop(0)
        return b""


class SnapshotSession:
    """A psql session holding the exported snapshot and counting rows in it."""

    def __init__(self, session: Session):
        # psql block-buffers stdout into a pipe; stderr is unbuffered, so the id comes back by \\warn.
        head = ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
                "SELECT pg_export_snapshot() AS bak_snapshot \\gset\n"
                "\\warn bak-snapshot :bak_snapshot\n" + ROW_COUNTS_SQL + "\n")
        self.script = GatedScript(head, "COMMIT;\n")
        self.session = session
        self.snapshot: str | None = None
        self.row_counts: dict[str, int] = {}
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._buffer = b""
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.session.run(psql_argv(self.session.options, self.session.options["database"]), stdin=self.script,
                             stdout=self._feed, on_stderr_line=self._stderr_line)
        except BaseException as exc:  # surfaced to the caller through .error
            self.error = exc
        finally:
            self.ready.set()

    def _feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            fields = line.decode("utf-8", "replace").split(FIELD)
            if fields[0] == "rows":
                self.row_counts[fields[1]] = int(fields[2])

    def _stderr_line(self, line: str) -> None:
        if line.startswith("bak-snapshot "):
            self.snapshot = line.split()[1]
            self.ready.set()

    def start(self) -> str:
        self._thread.start()
        if not self.ready.wait(SNAPSHOT_WAIT_S) or self.snapshot is None:
            self.script.gate.set()
            self._thread.join(5)
            if isinstance(self.error, CommandFailed):
                raise explain_connection_failure(self.error, self.session.target)
            raise self.error or CommandFailed("psql did not export a snapshot in time", where=self.session.target.name)
        return self.snapshot

    def finish(self) -> dict[str, int]:
        self.script.gate.set()
        self._thread.join()
        if self.error:
            raise self.error
        return self.row_counts


class PgDump(Method):
    name = "pg_dump"

    # -- prechecks --------------------------------------------------------------------------
    def precheck(self, session: Session) -> dict:
        options = session.options
        self.require_ready(session)
        try:
            row = session.sql(PRECHECK_SQL)[0]
        except CommandFailed as exc:
            raise explain_connection_failure(exc, session.target) from None
        user, superuser, can_connect, size, version, unreadable, table_bytes = row
        if can_connect != "t" or unreadable:
            raise Refused(f"role {user} cannot dump {options['database']}: "
                          + ("no CONNECT privilege" if can_connect != "t" else f"no SELECT on {unreadable}"),
                          where=f"targets.{session.target.name}", code="pg_privilege",
                          hint=f"GRANT CONNECT ON DATABASE ... and GRANT SELECT ON ... TO {user} (or use the pg_read_all_data role).")
        return {"user": user, "superuser": superuser == "t", "database_size": int(size), "server_version": version,
                "table_bytes": int(table_bytes)}

    @staticmethod
    def require_ready(session: Session) -> None:
        """pg_isready: the server answers (it reads nothing and needs no password)."""
        options = session.options
        ready = session.run(isready_argv(options), check=False)
        if ready.returncode != 0:
            meaning = {1: "rejecting connections (starting up or shutting down)", 2: "no response",
                       3: "no attempt made (bad connection parameters)"}.get(ready.returncode, "unknown state")
            raise not_ready(options, session.target, meaning, returncode=ready.returncode)

    def preflight(self, ctx: Context, target: Target) -> None:
        self.require_ready(Session(ctx, target))  # the password is read by the caller, without a passfile

    def require_space(self, stores: list[Store], target: Target, table_bytes: int) -> int:
        """Room for the dump: a little more than the last one, else than the tables' data. The database's own
        size counts its indexes and ~7 MB of catalogs, which no dump holds: it refused a 1.1 MB dump on 2 MB."""
        last = max((l.backups[0].size for l in (scan(s, target) for s in stores) if l.backups), default=None)
        needed = int(SPACE_FACTOR * (last if last is not None else table_bytes))
        for store in stores:
            store.require_space(needed)
        return needed

    # -- create -----------------------------------------------------------------------------
    def create(self, ctx: Context, target: Target, stores: list[Store], op: Operation) -> dict:
        options = target.options
        name = naming.pg_dump_name(options["database"], ctx.now, options["format"])
        folder = folder_of(target)
        with Session(ctx, target) as session:
            for store in stores:
                clear_leftovers(ctx, store, scan(store, target))
                store.refuse_existing(folder, name)
            facts = self.precheck(session)
            needed = self.require_space(stores, target, facts["table_bytes"])
            ctx.progress(f"{target.name}: dumping {options['database']} ({facts['database_size']} bytes in the database)")
            started = time.monotonic()
            snapshot = SnapshotSession(session)
            snapshot_id = snapshot.start()
            fan = FanOut(stores, folder, name)
            try:
                session.run(dump_argv(options, snapshot_id), stdout=fan.write, timeout=target.timeout.total_seconds())
            except BaseException as exc:
                fan.abort()
                snapshot.script.gate.set()
                if isinstance(exc, CommandFailed):
                    raise explain_connection_failure(exc, target) from None
                raise
            try:
                row_counts = snapshot.finish()
                duration = time.monotonic() - started
                globals_sql = None
                if options["globals"]:
                    globals_sql = session.run(globals_argv(options, with_passwords=facts["superuser"])).stdout
                    if not facts["superuser"]:
                        ctx.warnings.append(f"{target.name}: roles dumped without their passwords ({facts['user']} is not "
                                            "a superuser); set them again after restoring the roles")
            except BaseException:
                fan.abort()
                raise
            meta = {"target": target.name, "database": options["database"], "format": options["format"], "name": name,
                    "created_at": ctx.now.isoformat(), "server_version": facts["server_version"],
                    "database_size": facts["database_size"], "row_counts": row_counts, "duration_s": round(duration, 3),
                    "size": fan.size, "sha256": fan.finish(), "snapshot_consistent": True,
                    "globals": globals_sql is not None}
            sidecars = {name + ".meta.json": json.dumps(meta, indent=1).encode()}
            if globals_sql is not None:
                sidecars[name + ".globals.sql"] = globals_sql
            written = fan.commit(sidecars)
        op.bytes, op.checksum = written.size, written.sha256
        return {"target": target.name, "name": name, "size": written.size, "sha256": written.sha256,
                "duration_s": round(duration, 3), "space_needed": needed, "tables": len(row_counts),
                "copies": [{"store": c.store, "location": c.location, "ok": c.ok, "error": c.error} for c in written.copies]}

    # -- verify -----------------------------------------------------------------------------
    def verify(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        checker = full_read_argv(target.options) if backup.name.endswith(".dump") else ["gzip", "-t"]
        return check_file(store, backup, ctx.hosts.runner("local"), checker)

    # -- restore ----------------------------------------------------------------------------
    def restore_target(self, ctx: Context, target: Target, into: str | None) -> str:
        database = into or f"{target.options['database']}_restored_{ctx.now:%Y%m%d_%H%M%S}"
        if not naming.is_safe_name(database):
            raise BadInput(f"{database!r} is not a safe database name", where="--into",
                           hint="Letters, digits, '_', '.', '-', at most 64 characters.")
        return database

    def check_restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                      force: bool, options: dict) -> dict:
        """What a restore would do, refused now if it could not: rights, an existing database, the format."""
        database = self._check_request(ctx, target, backup, into, options)
        with Session(ctx, target) as session:
            return self._check_rights(session, database, force)

    def _check_request(self, ctx: Context, target: Target, backup: Backup, into: str | None, options: dict) -> str:
        if options.get("no_owner") and not backup.name.endswith(".dump"):
            raise BadInput("--no-owner applies to custom (.dump) archives; plain SQL carries its owners",
                           where="--no-owner", hint="Restore a plain .sql.gz dump as a superuser.")
        return self.restore_target(ctx, target, into)

    def _check_rights(self, session: Session, database: str, force: bool) -> dict:
        try:
            row = session.sql(RESTORE_RIGHTS_SQL, "postgres", {"db": database})[0]
        except CommandFailed as exc:
            raise explain_connection_failure(exc, session.target) from None
        user, can_create, exists, can_drop = row[0], row[1] == "t", row[2] == "t", row[3] == "t"
        if exists and not force:
            raise Refused(f"database {database} already exists; restore never overwrites", where="--into",
                          code="would_overwrite",
                          hint="Restore beside it (omit --into, or pick a new name), or pass --force to replace it "
                               "after a safety dump.")
        if not can_create:
            raise Refused(f"role {user} may not create databases, so it cannot restore", where=session.target.name,
                          code="pg_privilege", hint=f"ALTER ROLE {user} CREATEDB; or restore as a superuser.")
        if exists and not can_drop:
            raise Refused(f"role {user} does not own database {database}, so it cannot replace it",
                          where=session.target.name, code="pg_privilege",
                          hint="Restore beside it, or replace it as its owner or a superuser.")
        return {"database": database, "exists": exists, "role": user}

    def restore(self, ctx: Context, target: Target, store: Store, backup: Backup, *, into: str | None,
                force: bool, options: dict) -> dict:
        """Loaded into a database of its own (bak_incoming_...) and renamed to its name only once complete (with
        --force over an existing one, after a safety dump): a failed restore changes nothing, and a killed one
        leaves only the journaled bak_incoming_ database, which the next restore or drill drops."""
        database = self._check_request(ctx, target, backup, into, options)
        with Session(ctx, target) as session:
            exists = self._check_rights(session, database, force)["exists"]
            safety = self._safety_dump(ctx, session, target, store, database) if exists else None
            work = f"{INCOMING_PREFIX}{ctx.now:%Y%m%d_%H%M%S}_{database}"[:63]
            ctx.stage(f"database:{work}")
            session.sql("CREATE DATABASE :\"db\";", "postgres", {"db": work})
            started = time.monotonic()
            try:
                notes = self._load(session, store, backup, work, options)
            except BaseException as exc:
                session.sql("DROP DATABASE IF EXISTS :\"db\" WITH (FORCE);", "postgres", {"db": work})
                if isinstance(exc, CommandFailed) and re.search(r"must be (owner|member)|permission denied|role .* does not exist",
                                                                exc.stderr_tail):
                    exc.hint = ("The restoring role cannot recreate the original owners: pass --no-owner, "
                                "or restore as a superuser.")
                if safety and isinstance(exc, BakError):
                    exc.hint = (exc.hint or "") + f" {database} was not changed; its safety dump {safety} is kept."
                ctx.unstage(f"database:{work}")
                raise
            if exists:
                session.sql("DROP DATABASE :\"db\" WITH (FORCE);", "postgres", {"db": database})
            session.sql("ALTER DATABASE :\"work\" RENAME TO :\"db\";", "postgres", {"db": database, "work": work})
            ctx.unstage(f"database:{work}")
            duration = time.monotonic() - started
        return {"target": target.name, "backup": backup.name, "store": store.name, "database": database,
                "replaced": exists, "safety_dump": safety, "duration_s": round(duration, 3), "notes": notes[:20]}

    def _load(self, session: Session, store: Store, backup: Backup, database: str, options: dict) -> list[str]:
        """Stream the dump into the database, checking its sha256 on the way (one read).

        A drill (`options["drill"]`) leaves owners and privileges out, which the backup role usually
        cannot recreate: pg_restore's --no-owner/--no-privileges, or for plain SQL the statements that
        fail for that reason only, returned as notes. Any other error still fails the load."""
        drill = options.get("drill", False)
        no_owner, no_privileges = options.get("no_owner", False) or drill, drill
        expected = recorded_sha256(store, backup)
        notes: list[str] = []
        with store.open_read(backup.folder, backup.name) as plain:
            raw = HashingReader(plain)
            try:
                notes = self._stream_into(session, backup, raw, database, options, drill, no_owner, no_privileges)
                raw.drain()
            except (BakError, OSError, EOFError, zlib.error) as exc:
                # A load that breaks off on a damaged copy (pg_restore's "unexpected EOF", gzip's CRC) is the copy's
                # fault, not the database's: said as such, so the restore goes on to the next copy.
                damage = self._damage(store, backup, raw, expected)
                if damage:
                    raise damage from None
                if isinstance(exc, BakError):
                    raise
                raise CommandFailed(f"{backup.name} could not be decompressed: {exc}", where=database,
                                    code="restore_failed") from None
        if expected and raw.hash.hexdigest() != expected:
            raise VerifyFailed(f"{backup.name} on {store.name} does not match its .sha256: the restore was discarded",
                               where=f"{store.name}:{backup.name}", hint="Restore another copy (--from) or an older backup.")
        return notes

    def _stream_into(self, session: Session, backup: Backup, raw: HashingReader, database: str, options: dict,
                     drill: bool, no_owner: bool, no_privileges: bool) -> list[str]:
        opts = session.options
        if backup.name.endswith(".dump"):
            jobs = int(options.get("jobs") or opts["restore_jobs"])
            if jobs > 1:
                with session.runner.private_file() as staged:
                    session.run(["dd", f"of={staged}", "bs=1M", "status=none"], stdin=raw)
                    session.run(restore_argv(opts, database, jobs=jobs, no_owner=no_owner,
                                             no_privileges=no_privileges, path=staged))
            else:
                session.run(restore_argv(opts, database, no_owner=no_owner, no_privileges=no_privileges), stdin=raw)
            return []
        import gzip

        out = session.run(psql_argv(opts, database, stop_on_error=not drill), stdin=gzip.GzipFile(fileobj=raw, mode="rb"))
        errors = [line for line in out.stderr_text.splitlines() if "ERROR:" in line]
        notes = [e for e in errors if OWNERSHIP_ERROR.search(e)]
        if len(notes) < len(errors):
            other = [e for e in errors if not OWNERSHIP_ERROR.search(e)]
            raise CommandFailed(f"loading {backup.name} failed: {other[0]}", where=database,
                                stderr_tail="\n".join(other[-20:]), code="restore_failed")
        return notes

    @staticmethod
    def _damage(store: Store, backup: Backup, raw: HashingReader, expected: str | None) -> VerifyFailed | None:
        """After a failed load: the rest of the copy read through its hash; a VerifyFailed when the copy itself
        is damaged (it does not match its .sha256, or cannot be read to its end)."""
        where = f"{store.name}:{backup.name}"
        try:
            raw.drain()
        except (BakError, OSError) as exc:
            return VerifyFailed(f"{backup.name} on {store.name} could not be read to its end: "
                                f"{getattr(exc, 'message', None) or exc}", where=where)
        if expected and raw.hash.hexdigest() != expected:
            return VerifyFailed(f"{backup.name} on {store.name} does not match its .sha256 (damaged copy): nothing of "
                                "it was kept", where=where, hint="Restore another copy (--from) or an older backup.")
        return None

    def _safety_dump(self, ctx: Context, session: Session, target: Target, store: Store, database: str) -> str:
        """A protected dump of a database about to be replaced, kept apart from the backups
        (never picked by restore or drill, never pruned by the policy): --force is never a one-way door."""
        opts = dict(session.options, database=database, format="custom")
        folder = safety_folder_of(target)
        name = free_name(store, folder, lambda when: naming.pg_dump_name(database, when))
        fan = FanOut([store], folder, name)
        try:
            session.run(dump_argv(opts, None), stdout=fan.write)
        except BaseException as exc:
            fan.abort()
            if isinstance(exc, CommandFailed):
                raise Refused(f"could not take a safety dump of {database}, so it was not replaced: {exc.message}",
                              where=database, code="safety_dump_failed",
                              hint="Give the backup role SELECT on every table of that database, or restore beside it.") from None
            raise
        written = fan.commit({name + ".protected": b""})
        if not written.ok:
            raise Refused(f"could not write the safety dump of {database}, so it was not replaced: "
                          f"{written.copies[0].error['message']}", where=database, code="safety_dump_failed")
        where = f"{store.name}:{folder}/{name}"
        ctx.warnings.append(f"safety dump of {database} before replacing it: {where} (kept apart, protected)")
        return where

    # -- drill ------------------------------------------------------------------------------
    def remove_stage(self, ctx: Context, target: Target, where: str) -> bool:
        """A bak_incoming_ or bak_drill_ database a killed restore or drill left; nothing else."""
        kind, _, name = where.partition(":")
        if kind != "database" or not name.startswith((INCOMING_PREFIX, DRILL_PREFIX)):
            return False
        with Session(ctx, target) as session:
            if not session.sql("SELECT 1 FROM pg_database WHERE datname = :'db';", "postgres", {"db": name}):
                return False
            session.sql("DROP DATABASE IF EXISTS :\"db\" WITH (FORCE);", "postgres", {"db": name})
        return True

    def drill(self, ctx: Context, target: Target, store: Store, backup: Backup) -> dict:
        scratch = f"{DRILL_PREFIX}{target.options['database']}_{ctx.now:%Y%m%d_%H%M%S}"[:63]
        expected, unreadable = (None, "no .meta.json: row counts cannot be compared")
        if backup.name + ".meta.json" in backup.sidecars:
            try:
                expected, unreadable = recorded_row_counts(store.read_small(backup.folder, backup.name + ".meta.json"))
            except (OSError, BakError) as exc:
                unreadable = f"its .meta.json cannot be read: {getattr(exc, 'message', None) or exc}"
        result = {"target": target.name, "backup": backup.name, "store": store.name, "scratch_database": scratch,
                  "checks": []}
        ctx.stage(f"database:{scratch}")  # a drill killed from here on leaves it: the next restore or drill drops it
        # Owners and privileges are irrelevant to a drill, and the backup role usually cannot recreate them.
        try:
            restored = self.restore(ctx, target, store, backup, into=scratch, force=False, options={"drill": True})
        except BaseException:
            ctx.unstage(f"database:{scratch}")  # the restore dropped what it made
            raise
        result["restore_duration_s"] = restored["duration_s"]
        if restored.get("notes"):
            result["checks"].append({"check": "owners and privileges left out (the drill's role cannot set them)",
                                     "ok": True, "statements": len(restored["notes"])})
        failures = []
        try:
            with Session(ctx, target) as session:
                counts = {row[1]: int(row[2]) for row in session.sql(ROW_COUNTS_SQL, scratch)}
                if expected is None:
                    failures.append(unreadable)
                    result["checks"].append({"check": "row counts", "ok": False, "error": unreadable})
                else:
                    diff = {t: {"expected": expected.get(t), "restored": counts.get(t)}
                            for t in set(expected) | set(counts) if expected.get(t) != counts.get(t)}
                    shown = {t[:200]: diff[t] for t in sorted(diff)[:20]}  # the meta file may name any number of tables
                    result["checks"].append({"check": "row counts", "tables": len(expected), "ok": not diff,
                                             "differences": shown})
                    if diff:
                        failures.append(f"row counts differ in {len(diff)} table(s): {', '.join(t[:80] for t in sorted(diff)[:5])}")
                for query in target.options.get("sanity_queries") or []:
                    try:
                        rows = session.sql(query, scratch)
                        ok = bool(rows)
                        result["checks"].append({"check": query, "ok": ok, "rows": len(rows)})
                        if not ok:
                            failures.append(f"sanity query returned no row: {query}")
                    except CommandFailed as exc:
                        result["checks"].append({"check": query, "ok": False, "error": exc.stderr_tail[-300:]})
                        failures.append(f"sanity query failed: {query}")
        finally:
            with Session(ctx, target) as session:
                session.sql("DROP DATABASE IF EXISTS :\"db\" WITH (FORCE);", "postgres", {"db": scratch})
            ctx.unstage(f"database:{scratch}")
        result["passed"] = not failures
        if failures:
            raise VerifyFailed(f"drill of {backup.name} from {store.name} failed: " + "; ".join(failures),
                               where=f"{store.name}:{backup.name}", code="drill_failed", details={"result": result})
        return result
