# Shared by the bench scripts (sourced): a free port, and a broker binary started on a
# scratch data directory whose address is printed once it listens. The caller sets `tmp`
# (a scratch directory) and `key` (the API key), and kills "$tmp/broker-pids" at exit.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_broker BINARY NAME [VAR=VALUE...] -> prints the address it listens on. The benches
# serve their pages on loopback (closed to pages by default) and drive one key hard (no
# per-key quotas).
start_broker() {
  local binary=$1 name=$2
  shift 2
  env CDPGATE_LISTEN=127.0.0.1:0 CDPGATE_DATA_DIR="$tmp/data-$name" CDPGATE_API_KEYS="$key" RUST_LOG=warn \
    CDPGATE_CREATES_PER_MINUTE=0 CDPGATE_BROWSER_EGRESS_ALLOW=loopback \
    CDPGATE_MAX_SESSIONS_PER_KEY=0 CDPGATE_MAX_BYO_SESSIONS_PER_KEY=0 \
    "$@" "$binary" "$tmp/no-config.toml" >"$tmp/$name.log" 2>&1 &
  echo $! >>"$tmp/broker-pids" # (often called in a subshell, where pids+= would be lost)
  for _ in $(seq 150); do
    address=$(grep -o "listening on [0-9.:]*" "$tmp/$name.log" 2>/dev/null | awk '{print $NF}' | head -1 || true)
    [ -n "$address" ] && { echo "$address"; return; }
    sleep 0.1
  done
  cat "$tmp/$name.log" >&2
  exit 1
}

# At exit: stops the brokers start_broker started and removes the scratch directory.
stop_brokers() {
  [ -f "$tmp/broker-pids" ] && xargs -r kill <"$tmp/broker-pids" 2>/dev/null || true
  sleep 1
  rm -rf "$tmp"
}

# At exit, for scripts that also start their own servers (pids in `pids`) and browserless:
# stops them and the brokers, removes browserless's links and the scratch directory.
stop_all() {
  kill "${pids[@]}" $(cat "$tmp/broker-pids" 2>/dev/null) 2>/dev/null || true
  wait 2>/dev/null || true
  browserless_unlink
  sleep 1
  rm -rf "$tmp"
}

# start_nginx UPSTREAM_ADDR -> prints the port of an nginx (Debian's, with its defaults and
# `worker_processes auto`) proxying WebSocket connections to UPSTREAM_ADDR, under
# "$tmp/nginx"; its master's pid goes to "$tmp/nginx-pid" (its workers are the children).
start_nginx() {
  local upstream=$1 port
  port=$(free_port)
  mkdir -p "$tmp/nginx/logs"
  cat >"$tmp/nginx/nginx.conf" <<CONF
worker_processes auto;
error_log $tmp/nginx/logs/error.log warn;
pid $tmp/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://$upstream;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
  }
}
CONF
  nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
  echo $! >"$tmp/nginx-pid"
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "$port"; return; }
    sleep 0.1
  done
  cat "$tmp/nginx/logs/error.log" >&2
  exit 1
}

# browserless 2.42 from npm, installed once under target/bench-browserless, on the Chromium
# executable BROWSERLESS_CHROME (default Debian's /usr/bin/chromium; the headless shell:
# /usr/lib/chromium/chromium-headless-shell). It insists on finding every browser it knows
# (Chrome, Edge, Playwright's Chromium, Firefox, WebKit): browserless_setup links the
# missing paths to that executable, noting each link in "$tmp/browserless-links";
# browserless_unlink (call it at exit) removes them. Only Chromium is ever started.
browserless_setup() {
  local b path
  bl=target/bench-browserless
  bl_chrome=${BROWSERLESS_CHROME:-/usr/bin/chromium}
  if ! [ -d "$bl/node_modules/@browserless.io/browserless" ]; then
    mkdir -p "$bl"
    (cd "$bl" && npm install --silent --no-audit --no-fund @browserless.io/browserless@2.42.0)
  fi
  # It requires its own copy of playwright-core where npm hoisted the shared one.
  mkdir -p "$bl/node_modules/@browserless.io/browserless/node_modules"
  ln -sfn "$(pwd)/$bl/node_modules/playwright-core" "$bl/node_modules/@browserless.io/browserless/node_modules/playwright-core"
  for b in chromium firefox webkit; do
    browserless_link "$(cd "$bl" && node -e "import('playwright-core').then(p=>console.log(p.$b.executablePath()))")"
  done
  browserless_link /usr/bin/google-chrome-stable
  browserless_link /usr/bin/microsoft-edge-stable
}

browserless_link() {
  if ! [ -e "$1" ]; then
    mkdir -p "$(dirname "$1")"
    ln -s "$bl_chrome" "$1"
    echo "$1" >>"$tmp/browserless-links"
  elif [ -L "$1" ] && [ "$(readlink "$1")" != "$bl_chrome" ]; then
    echo "$1 links to $(readlink "$1"), not $bl_chrome: remove it first" >&2
    exit 1
  fi
}

browserless_unlink() {
  [ -f "$tmp/browserless-links" ] || return 0
  while read -r l; do rm -f "$l"; done <"$tmp/browserless-links"
  rm -f "$tmp/browserless-links"
}

# start_browserless CONCURRENCY -> prints the WebSocket URL a Puppeteer connect takes (each
# connection launches a browser; on the headless shell with "headless": "shell"). Its pid
# goes to "$tmp/broker-pids" with the brokers'. Call browserless_setup first.
start_browserless() {
  local port
  port=$(free_port)
  (cd "$bl/node_modules/@browserless.io/browserless" && PORT=$port HOST=127.0.0.1 TOKEN=bench-token \
    CONCURRENT="$1" QUEUED=1000 DEBUG=-* exec node build/index.js) >"$tmp/browserless.log" 2>&1 &
  echo $! >>"$tmp/broker-pids"
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$port/json/version?token=bench-token" >/dev/null && break
    sleep 0.2
  done
  local ws="ws://127.0.0.1:$port/chromium?token=bench-token"
  case "$bl_chrome" in
    *headless-shell*) ws="$ws&launch=%7B%22headless%22%3A%22shell%22%7D" ;;
  esac
  echo "$ws"
}

# serve_html HTML -> prints the URL of a local page with that HTML (python's http.server on
# loopback, under "$tmp/site"); its pid goes to "$tmp/broker-pids".
serve_html() {
  local port
  mkdir -p "$tmp/site"
  echo "$1" >"$tmp/site/index.html"
  port=$(free_port)
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$tmp/site" >/dev/null 2>&1 &
  echo $! >>"$tmp/broker-pids"
  echo "http://127.0.0.1:$port/index.html"
}
