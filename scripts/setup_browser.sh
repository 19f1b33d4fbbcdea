#!/usr/bin/env bash
# Installs Debian's Chromium (for the web-page test) when missing and we may use apt; never downloads a browser build.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || exit 1
  command -v chromium >/dev/null 2>&1
else
  exit 1
fi
