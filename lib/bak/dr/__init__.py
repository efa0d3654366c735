"""Disaster recovery of the whole homelab: the recovery order, the plan with its commands and expected
times, the drill of every target in that order, and the recovery kit kept beside the backups."""

# The recovery kit: a folder of its own at the root of each destination, beside the seed's kind folders
# (proxmox/ postgresql/ rsync/ ...), which the catalogue never reads.
KIT_FOLDER = "bak"
KIT_INDEX = "kit.json"  # written last: each file's size and sha256
KIT_CONFIG, KIT_JOURNAL, KIT_KNOWN_HOSTS = "config.yaml", "journal.sqlite", "known_hosts"
RUNBOOK_MD, RUNBOOK_HTML = "runbook.md", "runbook.html"
KIT_TARBALL = "kit.tar"  # the whole kit as one file, in a restic repository
