#!/usr/bin/env python3
"""/bak-dr: disaster recovery of the whole homelab: the ordered recovery plan (runbook) and its drill."""
from _bak import run

run("dr")
