#!/usr/bin/env python3
"""/bak-log: the journal of every create, verify, restore, drill and prune."""
from _bak import run

run("log")
