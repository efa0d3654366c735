#!/usr/bin/env python3
"""/bak-skill: install the skill and its /bak-* commands into Claude Code under their plain names."""
from _bak import run

run("skill")
