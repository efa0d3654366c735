#!/usr/bin/env python3
"""/bak-create: back up targets now; prints the JSON envelope."""
from _bak import run

run("create")
