#!/usr/bin/env python3
"""/bak-ssh: trust or check SSH host keys."""
from _bak import run

run("ssh")
