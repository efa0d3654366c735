#!/usr/bin/env python3
"""/bak-list: list backups per target and destination, leftovers and foreign files."""
from _bak import run

run("list")
