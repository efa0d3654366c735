#!/usr/bin/env python3
"""/bak-verify: sha256 plus each format's full read."""
from _bak import run

run("verify")
