#!/usr/bin/env bash
# Memory of pixelrelay (release build): idle RSS and what it is made of, RSS and the cost per
# connection with 1 000 idle SMTP connections and with 10 000 idle keep-alive pixel connections,
# and peak RSS while relaying 200 messages of 10 MB over 50 concurrent connections into
# smtp-sink, first with the default in-flight budget, then with smtp.max_inflight_bytes = 256 MiB
# (the client retries a 452 after 50 ms, as a queue would).   Usage: bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
command -v smtp-sink >/dev/null || { echo "bench/memory.sh: needs smtp-sink (apt-get install postfix)"; exit 2; }
cargo build --release -q --bin pixelrelay --example smtpload
ulimit -n 20000 2>/dev/null || true
W=$(mktemp -d); chmod 755 "$W"; SINKPID=""; RPID=""
cleanup() { kill "$SINKPID" "$RPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
. bench/lib.sh
SINK=$(port)
smtp-sink -u nobody -h sink.localhost -m 1000 127.0.0.1:$SINK 1024 & SINKPID=$!

# Starts a relay with [smtp] lines $1; sets RPID, RELAY, HTTP, ADMIN.
start() {
  RELAY=$(port); HTTP=$(port); ADMIN=$(port)
  rm -rf "$W/relay"; mkdir -p "$W/relay"
  cat > "$W/relay/relay.toml" <<CFG
[smtp]
listen = ["127.0.0.1:$RELAY"]
max_connections = 2000
max_connections_per_ip = 2000
$1
[upstream]
address = "127.0.0.1:$SINK"
pool_size = 64
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
  wait_port "$RELAY"; wait_port "$HTTP"
}
stop() { kill "$RPID"; wait "$RPID" 2>/dev/null || true; RPID=""; }
metric() { curl -s -H "Authorization: Bearer $(cat "$W/relay/data/admin.token")" "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
kb() { awk -v k="$1:" '$1 == k {print $2}' /proc/$RPID/status; }

start ""
sleep 1
echo "idle RSS: $(($(kb VmRSS) / 1024)) MB (anonymous $(($(kb RssAnon) / 1024)) MB, file-backed $(($(kb RssFile) / 1024)) MB, threads $(kb Threads))"
python3 - "$RPID" <<'PY'
import collections, re, sys
rss = collections.Counter()
name = None
for line in open(f"/proc/{sys.argv[1]}/smaps"):
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        f = line.split()
        size = (lambda a, b: (int(b, 16) - int(a, 16)) >> 20)(*f[0].split("-"))
        name = f[5] if len(f) > 5 else ("heap arena (mimalloc)" if size >= 256 else "other anonymous (stacks, small maps)")
    elif line.startswith("Rss:"):
        rss[name] += int(line.split()[1])
for k, v in rss.most_common(6):
    print(f"  {v / 1024:6.1f} MB  {k}")
PY

python3 - "$RELAY" "$HTTP" "$RPID" <<'PY'
import socket, sys
smtp, http, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
base = rss()
conns = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", smtp))
    s.recv(100)                                  # the banner: the session is up
    s.sendall(b"EHLO client.example\r\n")
    while not b"\r\n250 " in b"\r\n" + s.recv(1000):
        pass
    conns.append(s)
after = rss()
print(f"RSS with 1000 idle SMTP connections (after EHLO): {after / 1024:.1f} MB, "
      f"{(after - base) / 1000:.1f} kB per connection")
for s in conns:
    s.close()
conns = []
base = rss()
req = b"GET /o/not-a-token.gif HTTP/1.1\r\nHost: t\r\nUser-Agent: bench\r\n\r\n"
for _ in range(10000):
    s = socket.create_connection(("127.0.0.1", http))
    s.sendall(req)
    s.recv(4096)                                 # one pixel served; the connection stays open
    conns.append(s)
after = rss()
print(f"RSS with 10000 idle keep-alive pixel connections: {after / 1024:.1f} MB, "
      f"{(after - base) / 10000:.1f} kB per connection")
for s in conns:
    s.close()
PY
stop

python3 - > "$W/big.eml" <<'PY'
import sys
sys.stdout.write("From: a@example.com\r\nTo: b@example.net\r\nSubject: big\r\nContent-Type: text/html\r\n\r\n<html><body>\r\n")
line = "<p>" + "x" * 72 + "</p>\r\n"
sys.stdout.write(line * (10 * 1024 * 1024 // len(line)))
sys.stdout.write("</body></html>\r\n")
PY
for budget in "" "max_inflight_bytes = 268435456"; do
  start "max_message_size = 12582912
$budget"
  limit=$(metric pixelrelay_smtp_inflight_limit_bytes)
  echo "${budget:-default budget} ($((limit / 1048576)) MiB):"
  target/release/examples/smtpload 127.0.0.1:$RELAY "$W/big.eml" 200 50 --retry | head -1
  echo "  peak RSS (VmHWM), 200 x 10 MB HTML over 50 connections: $(($(kb VmHWM) / 1024)) MB; RSS after: $(($(kb VmRSS) / 1024)) MB"
  echo "  tracked: $(metric 'pixelrelay_rewrite_decisions_total{decision="tracked",reason=""}'), sent without a pixel for want of memory: $(metric 'pixelrelay_rewrite_decisions_total{decision="skipped",reason="memory"}' | grep . || echo 0), refusals counted: $(metric pixelrelay_smtp_inflight_refused_total)"
  stop
done
