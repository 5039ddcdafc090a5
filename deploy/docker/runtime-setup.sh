#!/bin/sh
# What cdpgate's runtime image needs on Debian, installed idempotently: Chromium and its
# headless shell (context sessions' shared browsers), ffmpeg
# (recordings), fonts and the time zone database (a session's timezone is checked against
# it) from Debian's packages, curl for the health check, the unprivileged user `cdpgate` (so
# Chrome's sandbox is on) and its data directory. The Dockerfile runs this script, and
# tests/deploy.rs runs it on the test machine, so what the image gets is tested.
# usage: deploy/docker/runtime-setup.sh [DIR...]   the user's directories (data, shared
#        profiles; default /var/lib/cdpgate), owned by cdpgate, mode 0750
set -eu
[ "$#" -gt 0 ] || set -- /var/lib/cdpgate
packages="chromium chromium-headless-shell ffmpeg fonts-liberation fonts-noto-color-emoji fonts-noto-cjk ca-certificates curl tzdata"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  rm -rf /var/lib/apt/lists/*
fi
if ! id cdpgate >/dev/null 2>&1; then
  useradd --system --home-dir "$1" --shell /usr/sbin/nologin cdpgate
fi
for dir in "$@"; do
  mkdir -p "$dir"
  chown cdpgate:cdpgate "$dir"
  chmod 0750 "$dir"
done
