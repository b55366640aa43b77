#!/usr/bin/env bash
# Crash test: `kill -9` pixelrelay at random moments while a client that retries on 4xx and on
# dropped connections (examples/smtpload --retry, like an MTA queue) sends MESSAGES messages
# through it into smtp-sink. Afterwards every message the client saw accepted (250) must be at
# the sink: zero accepted-but-lost. Duplicates (accepted upstream, connection dropped before the
# client heard 250) are counted and reported.   Usage: bench/kill9.sh [MESSAGES] [CONNS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
N=${1:-5000}
C=${2:-10}
cargo build --release -q --bin pixelrelay --example smtpload
W=$(mktemp -d); chmod 755 "$W"; mkdir -p "$W/dump"; chmod 777 "$W/dump"
SINKPID=""; RPID=""
cleanup() { kill "$SINKPID" "$RPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
. bench/lib.sh
SINK=$(port); RELAY=$(port); HTTP=$(port); ADMIN=$(port)
python3 bench/make_message.py | grep -v '^Message-ID:' > "$W/msg.eml"
smtp-sink -u nobody -h sink.localhost -d "$W/dump/%M." 127.0.0.1:$SINK 1024 & SINKPID=$!
mkdir -p "$W/relay"
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
start() { target/release/pixelrelay -c "$W/relay/relay.toml" serve 2>>"$W/relay.log" & RPID=$!; }
start
( cd "$W" && "$OLDPWD/target/release/examples/smtpload" 127.0.0.1:$RELAY "$W/msg.eml" "$N" "$C" --retry > "$W/load.txt" ) & LOADPID=$!
kills=0
while kill -0 $LOADPID 2>/dev/null; do
  sleep "$(python3 -c 'import random;print(random.uniform(0.2,1.5))')"
  kill -0 $LOADPID 2>/dev/null || break
  kill -9 "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true
  kills=$((kills + 1))
  start
done
wait $LOADPID
cat "$W/load.txt"
sleep 1   # the sink writes its last dump file
grep -h -o '<load-[0-9]*@example.com>' "$W"/dump/* | sort > "$W/at_sink.txt"
sort "$W/accepted.txt" > "$W/accepted.sorted"
lost=$(comm -23 "$W/accepted.sorted" <(sort -u "$W/at_sink.txt") | wc -l)
dups=$(( $(wc -l < "$W/at_sink.txt") - $(sort -u "$W/at_sink.txt" | wc -l) ))
echo "kill -9 count: $kills"
echo "accepted by client: $(wc -l < "$W/accepted.sorted")   at sink (unique): $(sort -u "$W/at_sink.txt" | wc -l)"
echo "accepted but lost: $lost   duplicates at sink: $dups"
# Every message the sink received must have its record in the restarted relay's store (the
# record is journaled before the upstream sees the message). The admin API waits for the index.
wait_port "$ADMIN"
python3 - "$ADMIN" "$W/relay/data/admin.token" "$W/at_sink.txt" > "$W/records.txt" <<'PY'
import json, sys, urllib.request
port, token_file, sink = sys.argv[1], sys.argv[2], sys.argv[3]
token = open(token_file).read().strip()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
seen, cursor = set(), None
while True:
    url = f"http://127.0.0.1:{port}/api/v1/messages?limit=1000" + (f"&cursor={cursor}" if cursor else "")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    page = json.load(opener.open(req, timeout=30))
    seen.update(m["message_id"] for m in page["items"] if m.get("message_id"))
    cursor = page.get("next_cursor")
    if not cursor:
        break
at_sink = set(l.strip() for l in open(sink) if l.strip())
missing = sorted(at_sink - seen)
print(f"records in the store: {len(seen)}   received by the sink without a record: {len(missing)}")
for m in missing[:5]:
    print("  missing:", m)
PY
cat "$W/records.txt"
grep -q "without a record: 0$" "$W/records.txt"
[ "$lost" -eq 0 ]
