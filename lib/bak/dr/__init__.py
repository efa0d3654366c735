"""Disaster recovery of the whole homelab: the recovery order, the plan with its commands and expected
times, the drill of every target in that order, and the recovery kit kept beside the backups."""
