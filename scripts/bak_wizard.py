#!/usr/bin/env python3
"""/bak-wizard: setup (answers file -> config) and strategy (3-2-1 table, advice, storage estimate)."""
from _bak import run

run("wizard")
