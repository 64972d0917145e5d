"""Workstation-side conversion of the pretrained face models to int8 TFLite (never imported on the device)."""


class ConvertError(Exception):
    """A conversion step failed for a reason the user can act on; the message names the file."""
