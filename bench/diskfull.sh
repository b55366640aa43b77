#!/usr/bin/env bash
# Disk full: the sled store lives on a small tmpfs that is then filled up. The relay must keep
# relaying (messages go out untracked, the failure logged), and the pixel must keep answering
# with its GIF (store errors counted). Needs root (mount).   Usage: bench/diskfull.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
cargo build --release -q --bin pixelrelay --example smtpload
W=$(mktemp -d); chmod 755 "$W"; mkdir -p "$W/fs" "$W/relay"
SINKPID=""; RPID=""
cleanup() { kill "$SINKPID" "$RPID" 2>/dev/null || true; wait 2>/dev/null || true; umount "$W/fs" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
mount -t tmpfs -o size=8m tmpfs "$W/fs"
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
[store]
path = "$W/fs/db"
[log]
level = "warn"
CFG
target/release/pixelrelay -c "$W/relay/relay.toml" serve 2>"$W/relay.log" & RPID=$!
wait_port "$RELAY"
python3 bench/make_message.py > "$W/msg.eml"
echo "before filling the disk:"
target/release/examples/smtpload 127.0.0.1:$RELAY "$W/msg.eml" 200 4
dd if=/dev/zero of="$W/fs/filler" bs=64k 2>/dev/null || true
echo "tmpfs: $(df -h "$W/fs" | tail -1 | awk '{print $3 " used, " $4 " free"}')"
echo "with the disk full:"
target/release/examples/smtpload 127.0.0.1:$RELAY "$W/msg.eml" 2000 4
TOKEN=$(cat "$W/relay/data/admin.token")
curl_get() { python3 -c "
import urllib.request,sys
o=urllib.request.build_opener(urllib.request.ProxyHandler({}))
r=o.open(urllib.request.Request(sys.argv[1], headers={'Authorization':'Bearer $TOKEN'}))
sys.stdout.write(r.read().decode())" "$1"; }
# The pixel keeps answering with its GIF.
for i in $(seq 20); do python3 -c "
import urllib.request
o=urllib.request.build_opener(urllib.request.ProxyHandler({}))
r=o.open('http://127.0.0.1:$HTTP/o/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.gif')
assert r.status==200 and r.read().startswith(b'GIF')" ; done
echo "pixel answered 20/20 with the GIF"
curl_get "http://127.0.0.1:$ADMIN/metrics" | grep -E '^pixelrelay_(smtp_transactions_total|rewrite_decisions_total\{decision="skipped",reason="store_error"\}|pixel_requests_total)' || true
echo "store errors logged: $(grep -c 'store failed' "$W/relay.log" || true)"
kill -0 "$RPID" && echo "relay still running"
