#!/usr/bin/env python3
"""/bak-bootstrap: on a fresh machine, bak's config and journal back from the recovery kit beside the backups."""
from _bak import run

run("bootstrap")
