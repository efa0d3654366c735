#!/usr/bin/env python3
"""/bak-destination: create a destination's restic repository."""
from _bak import run

run("destination")
