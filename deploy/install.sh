#!/usr/bin/env bash
# Install the edgeface door lock from this bundle, offline: a venv from the bundled wheelhouse, the models, the
# profile and the sample frames (edgeface bench) under PREFIX, then (unless --venv-only) the 'edgeface' system user
# and the systemd unit. Run as root on Raspberry Pi OS bookworm 64-bit.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PREFIX=/opt/edgeface
PYTHON=python3
VENV_ONLY=0

die() { echo "install.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --venv-only) VENV_ONLY=1; shift ;;
        *) echo "usage: $0 [--prefix DIR] [--python PYTHON] [--venv-only]" >&2; exit 2 ;;
    esac
done

read -r PROFILE WANT < <("$PYTHON" -c 'import json, sys; b = json.load(open(sys.argv[1])); print(b["profile"], b["python"])' \
    "$HERE/bundle.json")
HAVE="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$HAVE" = "$WANT" ] || die "the bundled wheels are for Python $WANT; $PYTHON is Python $HAVE"

# Install from this bundle only: no index, no pip.conf (Raspberry Pi OS points pip at piwheels), no PIP_* settings.
for var in $(env | sed -n 's/^\(PIP_[A-Z_]*\)=.*/\1/p'); do unset "$var"; done
export PIP_CONFIG_FILE=/dev/null

# picamera2 and lgpio come from apt (python3-picamera2, python3-lgpio): the venv sees them when they are installed.
SYSTEM_SITE=()
if "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(not any(u.find_spec(m) for m in ("picamera2", "lgpio")))'
then
    SYSTEM_SITE=(--system-site-packages)
fi
mkdir -p "$PREFIX/bin"
"$PYTHON" -m venv --clear "${SYSTEM_SITE[@]}" "$PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install --quiet --no-index --find-links "$HERE/wheels" \
    -r "$HERE/requirements.txt" "$HERE"/edgeface-*.whl
rm -rf "$PREFIX/models" "$PREFIX/sample_images"
cp -R "$HERE/models" "$PREFIX/models"
cp -R "$HERE/sample_images" "$PREFIX/sample_images"
cp "$HERE/$PROFILE.toml" "$PREFIX/$PROFILE.toml"
cat > "$PREFIX/bin/edgeface" <<WRAPPER
#!/bin/sh
# edgeface with the models and the sample frames (edgeface bench) installed beside it.
export EDGEFACE_HOME="\${EDGEFACE_HOME:-$PREFIX}"
export EDGEFACE_MODELS="\${EDGEFACE_MODELS:-$PREFIX/models}"
exec "$PREFIX/venv/bin/edgeface" "\$@"
WRAPPER
chmod 755 "$PREFIX/bin/edgeface"
"$PREFIX/bin/edgeface" models > /dev/null 2>&1 || die "the installed edgeface cannot read its models"
echo "installed edgeface ($PROFILE) in $PREFIX"
[ "$VENV_ONLY" = 1 ] && exit 0

[ "$(id -u)" = 0 ] || die "run as root to create the user and the service (or pass --venv-only)"
getent group gpio > /dev/null || groupadd --system gpio
id edgeface > /dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/edgeface \
    --shell /usr/sbin/nologin edgeface
usermod -a -G video,gpio edgeface
install -d -o edgeface -g edgeface -m 750 /var/lib/edgeface /var/log/edgeface
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@PROFILE@|$PROFILE|g" "$HERE/edgeface-doorlock.service" \
    > /etc/systemd/system/edgeface-doorlock.service
ln -sf "$PREFIX/bin/edgeface" /usr/local/bin/edgeface
systemctl daemon-reload
cat <<NEXT
next:
  sudo -u edgeface edgeface enroll --profile $PREFIX/$PROFILE.toml --gallery /var/lib/edgeface/gallery.db PHOTOS/
  sudo systemctl enable --now edgeface-doorlock
  journalctl -u edgeface-doorlock -f    # decisions: /var/log/edgeface/doorlock.jsonl
NEXT
