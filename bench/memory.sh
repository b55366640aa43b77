#!/usr/bin/env bash
# Memory of pixelrelay: idle RSS, RSS with 1 000 idle SMTP connections, and peak RSS while
# relaying 50 concurrent 10 MB messages into smtp-sink.   Usage: bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
cargo build --release -q --bin pixelrelay --example smtpload
W=$(mktemp -d); chmod 755 "$W"; SINKPID=""; RPID=""
cleanup() { kill "$SINKPID" "$RPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
. bench/lib.sh
SINK=$(port); RELAY=$(port); HTTP=$(port); ADMIN=$(port)
smtp-sink -u nobody -h sink.localhost -m 1000 127.0.0.1:$SINK 1024 & SINKPID=$!
mkdir -p "$W/relay"
cat > "$W/relay/relay.toml" <<CFG
[smtp]
listen = ["127.0.0.1:$RELAY"]
max_connections = 2000
max_connections_per_ip = 2000
[upstream]
address = "127.0.0.1:$SINK"
pool_size = 64
[http]
listen = "127.0.0.1:$HTTP"
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
level = "warn"
CFG
target/release/pixelrelay -c "$W/relay/relay.toml" serve 2>"$W/relay.log" & RPID=$!
wait_port "$RELAY"
rss() { awk '/^VmRSS/ {print $2/1024 " MB"}' /proc/$RPID/status; }
echo "idle RSS: $(rss)"
python3 - "$RELAY" "$RPID" <<'PY'
import socket, sys
port, pid = int(sys.argv[1]), sys.argv[2]
conns = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.recv(100)   # the banner: the session is up
    conns.append(s)
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(f"RSS with 1000 idle SMTP connections: {int(rss)/1024:.1f} MB")
for s in conns:
    s.close()
PY
python3 - > "$W/big.eml" <<'PY'
import sys
sys.stdout.write("From: a@example.com\r\nTo: b@example.net\r\nSubject: big\r\n\r\n")
line = "x" * 76 + "\r\n"
sys.stdout.write(line * (10 * 1024 * 1024 // len(line)))
PY
target/release/examples/smtpload 127.0.0.1:$RELAY "$W/big.eml" 200 50
echo "peak RSS (VmHWM) after 200 x 10 MB messages over 50 connections: $(awk '/^VmHWM/ {print $2/1024 " MB"}' /proc/$RPID/status)"
echo "RSS after: $(rss)"
