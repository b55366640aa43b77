#!/usr/bin/env bash
# Pixel endpoint: wrk against pixelrelay's pixel listener (every hit a valid token, recorded in
# sled) and nginx's empty_gif with its access log on, in the same run; keep-alive and
# connection-per-hit. Prints req/s, p99 and the ratio, and checks opens stored = 200s counted.
# Usage: bench/pixel.sh [SECONDS]   (PIXEL_BENCH_ROUNDS keep-alive pairs, default 5)
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
  server { listen 127.0.0.1:$NG; location /o/ { empty_gif; add_header Cache-Control "no-store, no-cache, must-revalidate, private, max-age=0"; } }
}
CFG
nginx -p "$W/ng" -c "$W/ng/nginx.conf" -e "$W/ng/error.log" & pids+=($!)

# The pixel listener with a real store and 10 000 recorded messages; it runs for the whole bench.
# Built first: the wait for READY below is for the server, not for the compiler.
cargo test -q --release --test pixel_bench --no-run 2>/dev/null || cargo test --release --test pixel_bench --no-run
PIXEL_BENCH_PORT=$PX PIXEL_BENCH_SECS=3600 PIXEL_BENCH_TOKENS="$W/tokens.txt" \
  PIXEL_BENCH_LAG="$W/lag" PIXEL_BENCH_STOP="$W/stop" \
  cargo test -q --release --test pixel_bench -- --ignored --nocapture --exact pixel_bench_server >"$W/px.log" 2>&1 &
PXPID=$!; pids+=($PXPID)
for _ in $(seq 600); do grep -q READY "$W/px.log" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$W/px.log" || { cat "$W/px.log"; exit 1; }

cat > "$W/pixel.lua" <<LUA
local t, i = {}, 0
for l in io.lines("$W/tokens.txt") do t[#t + 1] = l end
request = function() i = i % #t + 1; return wrk.format("GET", "/o/" .. t[i] .. ".gif") end
LUA
run() { wrk -t2 -c64 -d"${SECS}s" --latency -s "$W/pixel.lua" "$@" 2>&1; }
# After a pixelrelay run the open index works through the journal behind it: wait until it has
# caught up (so the next run, nginx's included, does not share the CPU with it) and say how long.
catchup() {
  local t0 t1
  t0=$(date +%s.%N)
  until [ "$(cat "$W/lag" 2>/dev/null)" = 0 ]; do sleep 0.1; done
  t1=$(date +%s.%N)
  # ...and until the kernel has written the dirty pages out, which it would otherwise do during
  # the next run, throttling whoever writes then.
  sync
  awk -v a="$t0" -v b="$t1" -v c="$(date +%s.%N)" 'BEGIN { printf "%.1f s (then %.1f s to sync)", b - a, c - b }'
}
rps() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '/ 99%/ {print $2}'; }
total200() { awk '/requests in/ {print $1}'; }
# One wrk run against TARGET (nginx|pixelrelay) in MODE (keepalive|close): records req/s in
# R[TARGET.MODE.ROUND] and prints a line.
declare -A R
bench() {
  local target=$1 mode=$2 round=$3 extra=() port=$NG lag="" out
  [ "$mode" = close ] && extra=(-H "Connection: close")
  [ "$target" = pixelrelay ] && port=$PX
  out=$(run "${extra[@]}" "http://127.0.0.1:$port")
  R[$target.$mode.$round]=$(rps <<<"$out")
  if [ "$target" = pixelrelay ]; then
    echo "$out" | total200 >> "$W/px-200s.txt"
    lag="index caught up $(catchup) after the run"
  fi
  printf "%-28s %12s %10s   %s\n" "$target/$mode #$round" "${R[$target.$mode.$round]}" "$(p99 <<<"$out")" "$lag"
}
# The machine is shared and its speed drifts over minutes, so keep-alive is measured in ROUNDS
# pairs, alternating which of the two goes first, and the median of the pair ratios is the
# figure.
ROUNDS=${PIXEL_BENCH_ROUNDS:-5}
# Warm-up, not counted: a fresh process's first burst pays for page faults as its heap and
# sled's cache grow (pixelrelay's first 10 s run was 10-15 % slower than its later ones).
run -d3s "http://127.0.0.1:$NG" >/dev/null
run -d3s "http://127.0.0.1:$PX" | total200 >> "$W/px-200s.txt"
catchup >/dev/null
printf "%-28s %12s %10s\n" target req/s p99
ratios=()
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order=(nginx pixelrelay); else order=(pixelrelay nginx); fi
  for target in "${order[@]}"; do bench "$target" keepalive "$round"; done
  ratios+=("$(python3 -c "print(f'{${R[pixelrelay.keepalive.$round]}/${R[nginx.keepalive.$round]}:.3f}')")")
done
for target in nginx pixelrelay; do bench "$target" close 1; done
# Diagnostic, not the target: the same listener answering a forged token (a real token with
# its last character changed: decoded and MAC-checked, then the GIF, nothing journaled), i.e.
# what the HTTP path and token check cost without the open being recorded.
tok=$(head -1 "$W/tokens.txt"); last=${tok: -1}; sub=A; [ "$last" = A ] && sub=B
cat > "$W/forged.lua" <<LUA
local path = "/o/${tok:0:${#tok}-1}$sub.gif"
request = function() return wrk.format("GET", path) end
LUA
out=$(wrk -t2 -c64 -d"${SECS}s" --latency -s "$W/forged.lua" "http://127.0.0.1:$PX" 2>&1)
R[forged]=$(rps <<<"$out")
printf "%-28s %12s %10s\n" "pixelrelay/forged" "${R[forged]}" "$(p99 <<<"$out")"
python3 - "${ratios[@]}" <<PY
import statistics, sys
r = [float(x) for x in sys.argv[1:]]
print("pixelrelay/nginx keep-alive by round: " + ", ".join(f"{x:.2f}x" for x in r)
      + f"; median {statistics.median(r):.2f}x")
print(f"pixelrelay/nginx connection-per-hit: {${R[pixelrelay.close.1]}/${R[nginx.close.1]}:.2f}x")
print(f"forged token, nothing recorded (HTTP path alone)/nginx keep-alive #1: {${R[forged]}/${R[nginx.keepalive.1]}:.2f}x")
PY
echo "wrk requests to pixelrelay (incl. in flight at stop): $(paste -sd+ "$W/px-200s.txt" | bc)"
# The pixel server stops, waits for its index, and prints what it counted and stored.
touch "$W/stop"
wait "$PXPID" || true
grep -v -E "^(running|test |$)" "$W/px.log" | tail -5
