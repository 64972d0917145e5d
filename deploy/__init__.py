"""Workstation tools that package edgeface for a device (not part of the device package)."""
