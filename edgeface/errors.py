"""The errors edgeface raises for things a user can fix; each message names the file and the problem."""


class EdgefaceError(Exception):
    """Base class: printed as one line by the CLI, never as a traceback."""


class ImageError(EdgefaceError):
    """An input image is missing, empty, corrupt, truncated, not an image, or too large."""


class ModelError(EdgefaceError):
    """A model file or the manifest is missing, corrupt, or does not match what the runtime expects."""


class ProfileError(EdgefaceError):
    """A hardware profile is unknown or has a bad key or value."""


class GalleryError(EdgefaceError):
    """The gallery database is unreadable, from another embedding model, or the request is invalid."""


class CameraError(EdgefaceError):
    """A frame source is missing, busy, or stopped delivering frames (a lost camera)."""


class RelayError(EdgefaceError):
    """The door relay cannot be driven (gpiozero missing, or the GPIO pin unavailable)."""


class FleetError(EdgefaceError):
    """The fleet (edgeface.fleet) cannot run: its extra is missing, a key or broker is unusable, or a bundle is bad."""
