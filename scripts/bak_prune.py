#!/usr/bin/env python3
"""/bak-prune: retention with Proxmox prune semantics; run with --dry-run first."""
from _bak import run

run("prune")
