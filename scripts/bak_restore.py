#!/usr/bin/env python3
"""/bak-restore: restore beside the original; --dry-run first, --force only after asking."""
from _bak import run

run("restore")
