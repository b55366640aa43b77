#!/usr/bin/env bash
# Thundering herd: 2 000 simultaneous SMTP connections against max_connections = 1 000, and
# 10 000 simultaneous pixel connections against http.max_connections = 2 000. Every SMTP
# connection must get a clean 220 or 421, the relay must survive, and its RSS stays bounded.
# Usage: bench/herd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
ulimit -n "$(ulimit -Hn)"
cargo build --release -q --bin pixelrelay
W=$(mktemp -d); RPID=""
cleanup() { kill "$RPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
. bench/lib.sh
SMTP=$(port); HTTP=$(port); ADMIN=$(port)
mkdir -p "$W/relay"
cat > "$W/relay/relay.toml" <<CFG
[smtp]
listen = ["127.0.0.1:$SMTP"]
max_connections = 1000
max_connections_per_ip = 2000
[upstream]
capture_dir = "out"
[http]
listen = "127.0.0.1:$HTTP"
max_connections = 2000
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
level = "warn"
CFG
target/release/pixelrelay -c "$W/relay/relay.toml" serve 2>"$W/relay.log" & RPID=$!
wait_port "$SMTP"
python3 - "$SMTP" "$HTTP" "$RPID" <<'PY'
import asyncio, sys, resource
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
smtp, http, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]) // 1024

async def smtp_client(results, hold):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", smtp)
        line = await asyncio.wait_for(r.readline(), 30)
        results.append(line[:3].decode(errors="replace") or "eof")
        await hold.wait()
        w.close()
    except Exception as e:
        results.append(type(e).__name__)

async def pixel_client(results):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", http)
        w.write(b"GET /o/forged.gif HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(r.readline(), 60)
        results.append(line[9:12].decode(errors="replace") or "eof")
        w.close()
    except Exception as e:
        results.append(type(e).__name__)

async def main():
    hold = asyncio.Event()
    res = []
    tasks = [asyncio.create_task(smtp_client(res, hold)) for _ in range(2000)]
    while len(res) < 2000:
        await asyncio.sleep(0.05)
    print(f"SMTP 2000 at once: " + ", ".join(f"{k}={res.count(k)}" for k in sorted(set(res))) + f"; relay RSS {rss()} MB")
    hold.set()
    await asyncio.gather(*tasks)
    res = []
    await asyncio.gather(*[pixel_client(res) for _ in range(10000)])
    print(f"pixel 10000 at once: " + ", ".join(f"{k}={res.count(k)}" for k in sorted(set(res))) + f"; relay RSS {rss()} MB")

asyncio.run(main())
PY
kill -0 "$RPID" && echo "relay still running"
