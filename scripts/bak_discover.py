#!/usr/bin/env python3
"""/bak-discover: the guests, databases and Docker volumes on the configured hosts that no target backs up."""
from _bak import run

run("discover")
