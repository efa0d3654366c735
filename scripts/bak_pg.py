#!/usr/bin/env python3
"""/bak-pg: PostgreSQL dump, verify, restore beside, restore drill."""
from _bak import run

run("pg")
