"""python -m convert: build the float and int8 models and the manifest (what `make models` runs)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from convert import ConvertError
from edgeface.manifest import edgeface_home, models_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    parser.add_argument("--out", type=Path, default=models_dir(), help="model folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=edgeface_home(),
                        help="downloads and work files (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="KEY", help="build only these model keys, e.g. retinaface-640")
    parser.add_argument("--check", action="store_true",
                        help="build nothing: list what would be rebuilt (exit 1 if anything would)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        from convert.build import build_all

        result = build_all(args.out.expanduser(), args.cache.expanduser(), args.only, log, args.check)
    except ConvertError as error:
        print(f"convert: error: {error}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(f"convert: error: {error.name} is not installed; run 'make install'", file=sys.stderr)
        return 1
    if isinstance(result, list):
        return 1 if result else 0
    log(f"manifest: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
