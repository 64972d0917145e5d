"""Bundled hardware profiles for edgeface, one `<name>.toml` per board (see edgeface.profiles)."""
