#!/usr/bin/env python3
"""/bak-demo: run the built-in sandbox lab (human output; it has no JSON form)."""
from _bak import run

run("demo", json_output=False)
