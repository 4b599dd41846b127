"""Stowaway scheduler: collect osquery and Zeek records, join, score, alert."""
