#!/usr/bin/env python3
"""/bak-metrics: Prometheus metrics for node_exporter's textfile collector."""
from _bak import run

run("metrics")
