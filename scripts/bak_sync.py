#!/usr/bin/env python3
"""/bak-sync: copy existing backups into a restic repository (off-site)."""
from _bak import run

run("sync")
