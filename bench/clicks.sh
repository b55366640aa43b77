#!/usr/bin/env bash
# Tracked-link redirect: wrk against pixelrelay's /c/{token} (every hit a valid click token:
# verified, 302 to its URL, the click journaled and recorded in sled) and nginx answering
# `return 302` with its access log on, in the same run; keep-alive and connection-per-hit.
# Prints req/s, p99 and the ratio, and checks clicks stored = redirects counted.
# Usage: bench/clicks.sh [SECONDS]   (CLICK_BENCH_ROUNDS keep-alive pairs, default 5;
# CLICK_BENCH_CLOSE_ROUNDS connection-per-hit pairs, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
SECS=${1:-10}
for tool in wrk nginx python3; do command -v "$tool" >/dev/null || { echo "needs $tool"; exit 2; }; done
W=$(mktemp -d); chmod 755 "$W"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
. bench/lib.sh
NG=$(port); PX=$(port)

mkdir -p "$W/ng"
cat > "$W/ng/nginx.conf" <<CFG
daemon off;
worker_processes 2;
pid $W/ng/nginx.pid;
error_log $W/ng/error.log;
events { worker_connections 4096; }
http {
  access_log $W/ng/access.log;
  client_body_temp_path $W/ng/body; proxy_temp_path $W/ng/proxy; fastcgi_temp_path $W/ng/fcgi;
  uwsgi_temp_path $W/ng/uwsgi; scgi_temp_path $W/ng/scgi;
  server {
    listen 127.0.0.1:$NG;
    location /c/ {
      add_header Cache-Control "no-store, no-cache, must-revalidate, private, max-age=0";
      add_header Referrer-Policy no-referrer;
      return 302 https://shop.example.com/spring/B1?utm_source=mail;
    }
  }
}
CFG
nginx -p "$W/ng" -c "$W/ng/nginx.conf" -e "$W/ng/error.log" & pids+=($!)

# Built first: the wait for READY below is for the server, not for the compiler.
cargo test -q --release --test pixel_bench --no-run 2>/dev/null || cargo test --release --test pixel_bench --no-run
PIXEL_BENCH_PORT=$PX PIXEL_BENCH_SECS=3600 PIXEL_BENCH_TOKENS="$W/tokens.txt" \
  PIXEL_BENCH_LAG="$W/lag" PIXEL_BENCH_STOP="$W/stop" \
  cargo test -q --release --test pixel_bench -- --ignored --nocapture --exact pixel_bench_server >"$W/px.log" 2>&1 &
PXPID=$!; pids+=($PXPID)
for _ in $(seq 600); do grep -q READY "$W/px.log" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$W/px.log" || { cat "$W/px.log"; exit 1; }

cat > "$W/click.lua" <<LUA
local t, i = {}, 0
for l in io.lines("$W/tokens.txt.clicks") do t[#t + 1] = l end
request = function() i = i % #t + 1; return wrk.format("GET", "/c/" .. t[i]) end
LUA
run() { wrk -t2 -c64 -d"${SECS}s" --latency -s "$W/click.lua" "$@" 2>&1; }
catchup() {
  local t0 t1
  t0=$(date +%s.%N)
  until [ "$(cat "$W/lag" 2>/dev/null)" = 0 ]; do sleep 0.1; done
  t1=$(date +%s.%N)
  sync
  awk -v a="$t0" -v b="$t1" -v c="$(date +%s.%N)" 'BEGIN { printf "%.1f s (then %.1f s to sync)", b - a, c - b }'
}
rps() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '/ 99%/ {print $2}'; }
non2xx() { awk '/Non-2xx or 3xx/ {print $5}'; }
declare -A R
bench() {
  local target=$1 mode=$2 round=$3 extra=() port=$NG lag="" out bad
  [ "$mode" = close ] && extra=(-H "Connection: close")
  [ "$target" = pixelrelay ] && port=$PX
  out=$(run "${extra[@]}" "http://127.0.0.1:$port")
  R[$target.$mode.$round]=$(rps <<<"$out")
  bad=$(non2xx <<<"$out"); [ -n "$bad" ] && { echo "$target answered $bad non-3xx"; echo "$out"; exit 1; }
  [ "$target" = pixelrelay ] && lag="index caught up $(catchup) after the run"
  printf "%-28s %12s %10s   %s\n" "$target/$mode #$round" "${R[$target.$mode.$round]}" "$(p99 <<<"$out")" "$lag"
}
ROUNDS=${CLICK_BENCH_ROUNDS:-5}
run -d3s "http://127.0.0.1:$NG" >/dev/null
run -d3s "http://127.0.0.1:$PX" >/dev/null
catchup >/dev/null
printf "%-28s %12s %10s\n" target req/s p99
# pairs MODE ROUNDS: alternating nginx/pixelrelay runs; prints the ratio of each round.
pairs() {
  local mode=$1 round order target out=()
  for round in $(seq "$2"); do
    if [ $((round % 2)) = 1 ]; then order=(nginx pixelrelay); else order=(pixelrelay nginx); fi
    for target in "${order[@]}"; do bench "$target" "$mode" "$round" >&2; done
    out+=("$(python3 -c "print(f'{${R[pixelrelay.$mode.$round]}/${R[nginx.$mode.$round]}:.3f}')")")
  done
  echo "${out[*]}"
}
ratios=$(pairs keepalive "$ROUNDS")
closes=$(pairs close "${CLICK_BENCH_CLOSE_ROUNDS:-3}")
python3 - "$ratios" "$closes" <<PY
import statistics, sys
for mode, arg in (("keep-alive", sys.argv[1]), ("connection-per-hit", sys.argv[2])):
    r = [float(x) for x in arg.split()]
    print(f"pixelrelay/nginx redirect {mode} by round: " + ", ".join(f"{x:.2f}x" for x in r)
          + f"; median {statistics.median(r):.2f}x")
PY
touch "$W/stop"
wait "$PXPID" || true
grep -v -E "^(running|test |$)" "$W/px.log" | tail -5
