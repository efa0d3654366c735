#!/usr/bin/env bash
# Install everything the test suite needs, system packages included, then run the whole suite.
# Usage: bash tests/run.sh [pytest args]. Root installs missing Debian packages with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(rsync openssh-server openssh-client postgresql restic rclone zstd git gzip tar procps util-linux coreutils
          systemd findutils podman runc conmon podman-docker busybox-static chromium fonts-liberation)
have_all() {
  local tool
  for tool in rsync /usr/sbin/sshd ssh ssh-keygen restic rclone zstd git gzip tar pkill mount unshare runuser sha256sum \
              systemd-analyze find podman runc conmon docker /bin/busybox chromium; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || return 1
  done
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || return 1
  id postgres >/dev/null 2>&1 || return 1
  [ -d /usr/share/fonts/truetype/liberation ] || return 1
}

if ! have_all; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing system packages: ${PACKAGES[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  else
    echo "missing system packages; run as root or: sudo apt-get install ${PACKAGES[*]}" >&2
    exit 1
  fi
fi

# The real Claude Code CLI (npm): the tests validate the plugin with it and read the command names it loads.
CLAUDE_CODE=@anthropic-ai/claude-code@2.1.197
if [ "$(claude --version 2>/dev/null | cut -d' ' -f1)" != "${CLAUDE_CODE##*@}" ]; then
  echo "installing $CLAUDE_CODE" >&2
  npm install -g --silent --no-fund --no-audit "$CLAUDE_CODE" >/dev/null
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Wheels of the pinned runtime dependencies: the plugin's first-use test installs from them, offline.
"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  -r scripts/requirements.lock -d tests/.wheelhouse
exec "$PYTHON" -m pytest "$@"
