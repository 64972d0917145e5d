"""Offline accuracy evaluation (benchmark protocols) for edgeface detectors."""
