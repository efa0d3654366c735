#!/usr/bin/env python3
"""/bak-doctor: the spec troubleshooting sections as checks, each with its fix."""
from _bak import run

run("doctor")
