"""Offline accuracy evaluation for edgeface: benchmark protocols (WIDER FACE, landmarks, LFW, open set), the
check-quant gates and report."""
