#!/usr/bin/env python3
"""/bak-status: dashboard of every backup (age, size, 3-2-1, verify, drill, space)."""
from _bak import run

run("status")
