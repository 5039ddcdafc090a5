#!/usr/bin/env bash
# Installs what cdpgate needs, only where it is missing (safe to run again):
#   scripts/setup.sh          Chromium and its headless shell (Debian's packages)
#   scripts/setup.sh --test   also cargo-deny, redis-server, nginx, Node.js, the Node CDP
#                             clients, the Python clients (dari, Playwright), moto (a
#                             local S3 server) and the unprivileged user cdpgate-test
#                             (for the sandbox test)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# The toolchain rust-toolchain.toml pins. This network reaches no toolchain server, so
# where rustup lacks it under that name but the installed stable is that very version,
# stable is registered under the pinned name.
pinned=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if command -v rustup >/dev/null 2>&1 && ! rustup run "$pinned" rustc --version >/dev/null 2>&1; then
  toolchains="$(rustup show home)/toolchains"
  host=$(rustc +stable -vV | sed -n 's/^host: //p')
  if rustc +stable --version | grep -q "^rustc $pinned "; then
    echo "setup: registering the installed stable toolchain as $pinned"
    ln -sfn "$toolchains/stable-$host" "$toolchains/$pinned-$host"
  else
    rustup toolchain install "$pinned" --profile minimal -c rustfmt -c clippy
  fi
fi

if ! [ -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing Chromium"
  apt_install chromium
fi
# Context sessions' shared browsers run Chromium's headless shell where it is installed.
if ! [ -x /usr/lib/chromium/chromium-headless-shell ]; then
  echo "setup: installing Chromium's headless shell"
  apt_install chromium-headless-shell
fi

# Recordings are encoded by ffmpeg (found on the PATH at start-up).
if ! command -v ffmpeg >/dev/null 2>&1; then
  echo "setup: installing ffmpeg"
  apt_install ffmpeg
fi

# Session timezones are checked against the system's time zone database.
if ! [ -f /usr/share/zoneinfo/Europe/Berlin ]; then
  echo "setup: installing tzdata"
  apt_install tzdata
fi

if [ "${1:-}" = "--test" ]; then
  # cargo-deny from crates.io checks licenses, duplicate crates and sources (deny.toml).
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "setup: installing cargo-deny (a few minutes, once)"
    cargo install cargo-deny --locked --quiet
  fi
  # Session records in Redis are tested against a real redis-server, started per test.
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "setup: installing redis-server"
    apt_install redis-server
  fi
  # The cluster is tested behind nginx, with deploy/nginx-cluster.conf.
  if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ]; then
    echo "setup: installing nginx"
    apt_install nginx
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup: installing Node.js"
    apt_install nodejs npm
  fi
  if ! [ -d tests/js/node_modules/puppeteer-core ] || ! [ -d tests/js/node_modules/playwright-core ] \
    || ! [ -d tests/js/node_modules/@fingerprintjs/botd ] || ! [ -d tests/js/node_modules/@modelcontextprotocol/sdk ] \
    || ! [ -d tests/js/node_modules/fpscanner ] || ! [ -d tests/js/node_modules/har-validator ]; then
    echo "setup: installing puppeteer-core, playwright-core, botd, fpscanner, har-validator and the MCP SDK (no browser download)"
    (cd tests/js && PUPPETEER_SKIP_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error)
  fi
  venv=target/test-venv
  if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import dari' 2>/dev/null; then
    echo "setup: installing dari-python into $venv"
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
      apt_install python3 python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv" || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check dari-python==0.1.7
  fi
  # Python Playwright drives sessions over CDP (no browser download: it uses ours).
  if ! "$venv/bin/python" -c 'import playwright' 2>/dev/null; then
    echo "setup: installing Python Playwright into $venv"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$venv/bin/pip" install -q --disable-pip-version-check 'playwright==1.65.2'
  fi
  # The OpenAPI document is checked by openapi-spec-validator and fuzzed by schemathesis.
  if ! [ -x "$venv/bin/schemathesis" ] || ! [ -x "$venv/bin/openapi-spec-validator" ]; then
    echo "setup: installing schemathesis and openapi-spec-validator into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0'
  fi
  # The MCP server is driven by the official MCP Python SDK (tests/py/mcp_drive.py).
  if ! "$venv/bin/python" -c 'import mcp.client.streamable_http' 2>/dev/null; then
    echo "setup: installing the MCP Python SDK into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'mcp==1.30.0'
  fi
  # Webhook deliveries are verified by the reference Standard Webhooks library.
  if ! "$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
    echo "setup: installing standardwebhooks into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'standardwebhooks==1.1.0'
  fi
  # Chrome's sandbox is tested with the broker run as an unprivileged user.
  if ! id cdpgate-test >/dev/null 2>&1; then
    echo "setup: adding the unprivileged user cdpgate-test"
    as_root useradd --system --no-create-home --shell /usr/sbin/nologin cdpgate-test
  fi
  # Profiles in an object store are tested against moto's local S3 server.
  if ! [ -x "$venv/bin/moto_server" ]; then
    echo "setup: installing moto (a local S3 server) into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
  fi
fi
