"""`bak dr drill`: every target's restore drill in recovery order, one report.

Each step is the method's own drill (a scratch VMID, database, folder or volume, checked, then removed,
also when the drill fails) of the copy the plan would restore from, or of the newest backup on `--from`.
A failing step does not stop the others. Each step's measured restore time is set against the plan's
estimate, and the totals against the plan's RTO.
"""

from __future__ import annotations

import time

from bak.actions import Session, copies_of, drill_backup, failed_drill
from bak.config import Config
from bak.dr.plan import build
from bak.errors import EXIT_BAD_INPUT, BadInput, BakError
from bak.report import Outcome


def drill_all(config: Config, store_name: str | None = None, progress=None) -> Outcome:
    if store_name is not None and store_name not in config.destinations:
        raise BadInput(f"no destination named {store_name!r}", where="--from",
                       hint="Destinations: " + (", ".join(sorted(config.destinations)) or "none"))
    outcome = Outcome({"from": store_name, "steps": []})
    with Session(config, progress) as session:
        plan, steps = build(session)
        for step, planned in zip(steps, plan["steps"]):
            target = step.target
            estimate = (planned["estimate"] or {}).get("seconds")
            row = {"step": planned["step"], "target": target.name, "method": target.method, "estimate_s": estimate}
            if store_name and store_name not in target.destinations:
                outcome.result["steps"].append({**row, "passed": None, "skipped": f"no copy on {store_name}"})
                continue
            session.ctx.progress(f"step {planned['step']}: drilling {target.name}")
            started = time.monotonic()
            store = backup = None
            try:
                store, backup = copies_of(session, target, None, store_name)[0] if store_name or not step.chosen \
                    else step.chosen
                result = drill_backup(session, target, store, backup)
            except BakError as exc:
                result = failed_drill(target, store, backup, exc)
                if exc.exit_code == EXIT_BAD_INPUT:  # no backup to drill: a finding of this run, not bad input to it
                    outcome.problem(exc.code, exc.message, exc.where, exc.hint)
                else:
                    outcome.failed(exc)
            restore_s = result.get("restore_duration_s")
            timed = restore_s is not None and estimate is not None
            row.update(backup=result.get("backup"), store=result.get("store"), passed=bool(result.get("passed")),
                       restore_s=restore_s, measured_s=round(time.monotonic() - started, 3),
                       difference_s=round(restore_s - estimate, 3) if timed else None,
                       checks=result.get("checks", []), **({"error": result["error"]} if "error" in result else {}))
            outcome.result["steps"].append(row)
        outcome.warnings.extend(session.ctx.warnings)
    ran = [s for s in outcome.result["steps"] if s["passed"] is not None]
    outcome.result.update(
        passed=sum(1 for s in ran if s["passed"]), failed=sum(1 for s in ran if not s["passed"]),
        skipped=len(outcome.result["steps"]) - len(ran), planned_rto_s=plan["rto_s"],
        restore_s=round(sum(s["restore_s"] or 0 for s in ran), 3), measured_s=round(sum(s["measured_s"] for s in ran), 3))
    return outcome
