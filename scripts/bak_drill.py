#!/usr/bin/env python3
"""/bak-drill: restore drill for any target (scratch database, folder or VMID; checked, then removed)."""
from _bak import run

run("drill")
