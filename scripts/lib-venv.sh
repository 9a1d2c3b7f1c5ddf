# Sourced by checks that need Python tools: one venv under target/, made once.
VENV="${DCDN_VENV:-$PWD/target/ci-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
fi
# pip_need PACKAGE [PIP ARGS...]: installs PACKAGE into the venv unless present.
pip_need() {
  local pkg="$1"
  shift
  "$VENV/bin/pip" show -q "$pkg" >/dev/null 2>&1 || "$VENV/bin/pip" install -q "$@" "$pkg"
}
