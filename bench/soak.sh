#!/usr/bin/env bash
# Soak: MESSAGES (default 200 000) tracked messages through pixelrelay into smtp-sink over 10
# connections, sampling pixelrelay's RSS every 5 s: memory must stay flat.
# Usage: bench/soak.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
N=${1:-200000}
cargo build --release -q --bin pixelrelay --example smtpload
W=$(mktemp -d); chmod 755 "$W"; mkdir -p "$W/relay"; SINKPID=""; RPID=""
cleanup() { kill "$SINKPID" "$RPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
. bench/lib.sh
SINK=$(port); RELAY=$(port); HTTP=$(port); ADMIN=$(port)
smtp-sink -u nobody -h sink.localhost 127.0.0.1:$SINK 1024 & SINKPID=$!
cat > "$W/relay/relay.toml" <<CFG
[smtp]
listen = ["127.0.0.1:$RELAY"]
[upstream]
address = "127.0.0.1:$SINK"
[tracking]
base_url = "http://127.0.0.1:$HTTP"
[http]
listen = "127.0.0.1:$HTTP"
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
level = "warn"
CFG
target/release/pixelrelay -c "$W/relay/relay.toml" serve 2>"$W/relay.log" & RPID=$!
wait_port "$RELAY"
python3 bench/make_message.py > "$W/msg.eml"
target/release/examples/smtpload 127.0.0.1:$RELAY "$W/msg.eml" "$N" 10 > "$W/load.txt" & LOAD=$!
start=$(date +%s)
echo "seconds  RSS_MB  store_MB"
while kill -0 $LOAD 2>/dev/null; do
  printf "%7s  %6s  %8s\n" $(( $(date +%s) - start )) \
    "$(awk '/^VmRSS/ {printf "%.1f", $2/1024}' /proc/$RPID/status)" \
    "$(du -sm "$W/relay/data/pixelrelay.db" | cut -f1)"
  sleep 5
done
wait $LOAD
cat "$W/load.txt"
echo "final RSS: $(awk '/^VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$RPID/status)"
