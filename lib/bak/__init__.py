"""bak: backup and disaster recovery for a homelab."""

__version__ = "0.1.0"
