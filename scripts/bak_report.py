#!/usr/bin/env python3
"""/bak-report: the backups at a glance, as one self-contained HTML file."""
from _bak import run

run("report")
