#!/usr/bin/env python3
"""/bak-config: check the config (every error with its key path) or print the documented example."""
from _bak import run

run("config")
