#!/usr/bin/env bash
# Installs bubblewrap (`bwrap`, the jail `scalelab eval` runs model-written code in) from the distribution's packages
# when missing and we may use the package manager; exits 1 when it cannot.
set -u
command -v bwrap >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != "0" ]; then
  echo "bubblewrap is missing: install the distribution's package (e.g. sudo apt-get install bubblewrap)" >&2
  exit 1
fi
if command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) || exit 1
elif command -v dnf >/dev/null 2>&1; then
  dnf install -y -q bubblewrap >/dev/null || exit 1
elif command -v apk >/dev/null 2>&1; then
  apk add -q bubblewrap >/dev/null || exit 1
else
  echo "bubblewrap is missing and no known package manager was found" >&2
  exit 1
fi
command -v bwrap >/dev/null 2>&1
