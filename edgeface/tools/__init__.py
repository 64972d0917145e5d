"""Workstation tools (fitting, evaluation): the device path never imports them."""
