#!/usr/bin/env python3
"""/bak-doctor: the usual causes of failed backups, checked, each with its fix."""
from _bak import run

run("doctor")
