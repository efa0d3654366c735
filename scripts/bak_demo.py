#!/usr/bin/env python3
"""/bak-demo: run the built-in sandbox lab; one envelope with each step's outcome."""
from _bak import run

run("demo")
