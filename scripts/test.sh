#!/usr/bin/env bash
# The test command: every test of the workspace, including the ones that need an SNS/SQS implementation.
#
# Installs Debian's Chromium for the browser tests if it is missing (exported as CHROMIUM).
# Starts moto server (a real third-party SNS/SQS implementation, from PyPI) on a free loopback port, exports
# MOTO_ENDPOINT for the tests that need it, builds the binaries the end-to-end tests start as separate processes,
# runs `cargo test --workspace --no-fail-fast -- --include-ignored` (extra arguments are passed to the test
# binaries; --no-fail-fast reports every failing crate, not just the first), and stops moto on the way out,
# whatever happens. Exits with cargo's status.
#
#   scripts/test.sh                     # everything
#   scripts/test.sh aws_                # only tests whose name contains "aws_"
#
# Environment: MOTO_VENV (default .venv-moto in the workspace) is reused when present.
set -euo pipefail

workspace="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$workspace"
venv="${MOTO_VENV:-$workspace/.venv-moto}"

if [[ ! -x "$venv/bin/moto_server" ]]; then
  echo "test.sh: installing moto[server] into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
fi

# Debian's Chromium for the browser tests (the dashboard and the HTML report), as root on a fresh machine.
if [[ ! -x /usr/bin/chromium ]]; then
  echo "test.sh: installing chromium (apt) for the browser tests" >&2
  if ! apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
    apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null
  fi
fi
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

# Ask the kernel for a free port (another process may hold moto's usual 5000 or LocalStack's 4566).
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_log="$(mktemp -t moto.XXXXXX.log)"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
moto_pid=$!

stop_moto() {
  kill "$moto_pid" 2>/dev/null || true
  wait "$moto_pid" 2>/dev/null || true
  rm -f "$moto_log"
}
trap stop_moto EXIT
# Turn Ctrl-C and kill into a normal exit, so that the EXIT trap stops moto.
trap 'exit 130' INT
trap 'exit 143' TERM

export MOTO_ENDPOINT="http://127.0.0.1:$port"
ready=false
for _ in $(seq 1 150); do
  if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('$MOTO_ENDPOINT/moto-api/', timeout=1)" 2>/dev/null; then
    ready=true
    break
  fi
  if ! kill -0 "$moto_pid" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
if [[ "$ready" != true ]]; then
  echo "test.sh: moto server did not answer on $MOTO_ENDPOINT:" >&2
  cat "$moto_log" >&2
  exit 1
fi
echo "test.sh: moto server on $MOTO_ENDPOINT (pid $moto_pid)" >&2

cargo build --workspace --bins
status=0
cargo test --workspace --no-fail-fast -- --include-ignored "$@" || status=$?
exit "$status"
