"""Workstation tools (fitting, measuring): never imported by the device commands, not in the device wheel."""
