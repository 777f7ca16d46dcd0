#!/usr/bin/env bash
# Install Google Research Football (gfootball 2.10.2) into the Python that runs htsrl-aio.
#
#   scripts/install-football.sh            # uses `python3` on PATH (or $PYTHON)
#   PYTHON=/path/to/venv/bin/python scripts/install-football.sh
#
# Idempotent: when `import gfootball` already works (and gym is the old-API 0.25.2) it does nothing.
# Otherwise (Debian/Ubuntu): apt-get installs the engine's build dependencies (needs root or sudo),
# then pip compiles gfootball from source (about 5-6 minutes on 2 cores). gfootball's build script
# calls a bare `python3`, so the target interpreter's bin dir is put first on PATH for the build.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
PYTHON="$(command -v "$PYTHON")"
PY_BIN="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
GFOOTBALL_VERSION="2.10.2"
GYM_VERSION="0.25.2"

football_imports() {
    "$PYTHON" - <<'PY' 2>/dev/null
import gym, gfootball.env  # noqa: F401
raise SystemExit(0 if gym.__version__ == "0.25.2" else 1)
PY
}

if football_imports; then
    echo "install-football: gfootball already importable in $PYTHON; nothing to do."
    exit 0
fi
if "$PYTHON" -c "import importlib.util as u; raise SystemExit(u.find_spec('gfootball') is None)"; then
    # Built already; something replaced the old gym it needs (gym 0.26 changed the reset API).
    "$PYTHON" -m pip install -q "gym==$GYM_VERSION"
    if football_imports; then
        echo "install-football: gfootball was built already; pinned gym==$GYM_VERSION."
        exit 0
    fi
fi

APT_PACKAGES=(git cmake build-essential libgl1-mesa-dev libsdl2-dev libsdl2-image-dev libsdl2-ttf-dev
              libsdl2-gfx-dev libboost-all-dev libdirectfb-dev libst-dev mesa-utils xvfb)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null; then
        echo "install-football: no apt-get; install the equivalents of: ${missing[*]} and re-run." >&2
        exit 1
    fi
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    echo "install-football: apt-get install ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

"$PYTHON" -m pip install -q psutil setuptools wheel six "gym==$GYM_VERSION"
echo "install-football: building gfootball $GFOOTBALL_VERSION from source (several minutes)"
PATH="$PY_BIN:$PATH" "$PYTHON" -m pip install --no-build-isolation "gfootball==$GFOOTBALL_VERSION"
# gfootball's own requirements may pull a newer gym; the old reset API needs exactly this one.
"$PYTHON" -m pip install -q "gym==$GYM_VERSION"
"$PYTHON" -c "import gfootball.env; print('install-football: gfootball installed OK')"
