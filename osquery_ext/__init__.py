"""Stowaway osquery extension: container and process tables for osqueryd."""
