#!/usr/bin/env bash
# The PostgreSQL store against the sled store, in one run on this machine:
#   1. indexing rate: 100 000 hits over 10 000 messages into each store
#      (tests/pixel_bench.rs store_record_open_rate{,_postgres}; the database is a throwaway
#      cluster the test starts, fsync off);
#   2. the SMTP path: 20 000 pipelined 12.6 KB messages at 10 connections into smtp-sink
#      through haproxy (TCP mode), pixelrelay on sled, pixelrelay on PostgreSQL (same machine,
#      the cluster started here), rounds alternated; prints msgs/s and the ratios;
#   3. index lag: two pixel-only nodes on that database, a 10 s keep-alive wrk burst at each
#      (PG_BENCH_BURST seconds), then the time until every answered hit is an open.
# Usage: bench/postgres.sh [MESSAGES] [ROUNDS]    (needs postgresql, postfix, haproxy, wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
N=${1:-20000}
ROUNDS=${2:-3}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
for tool in smtp-sink haproxy wrk python3 "$PGBIN/initdb"; do
  command -v "$tool" >/dev/null || { echo "bench/postgres.sh: needs $tool"; exit 2; }
done

echo "== indexing 100 000 hits over 10 000 messages"
for t in store_record_open_rate store_record_open_rate_postgres; do
  cargo test --release -q --test pixel_bench -- --ignored --nocapture --exact "$t" 2>/dev/null \
    | sed -n "s/^JOURNAL.*INDEXED/$t: INDEXED/p"
done

cargo build --release -q --bin pixelrelay --example smtpload
LOAD=target/release/examples/smtpload
W=$(mktemp -d); chmod 755 "$W"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -d "$W/pg" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
. bench/lib.sh
python3 bench/make_message.py > "$W/msg.eml"
SINK=$(port); HAP=$(port); PGPORT=$(port)

# A cluster of our own, as the postgres user (PostgreSQL refuses root).
mkdir "$W/pg"; chown postgres "$W/pg"; echo bench-password > "$W/pw"; chmod 644 "$W/pw"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/pg" -U postgres --auth=scram-sha-256 --pwfile "$W/pw" --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg/log" -w \
  -o "-p $PGPORT -k $W/pg -c listen_addresses=127.0.0.1" start >/dev/null
PGPASSWORD=bench-password "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE relay"

smtp-sink -u nobody -h sink.localhost -m 1000 127.0.0.1:$SINK 1024 & pids+=($!)
start_haproxy "$W/haproxy.cfg" "$HAP" "$SINK"

declare -A PORT
for store in sled postgres; do
  d="$W/$store"; mkdir -p "$d"; PORT[$store]=$(port); HTTP=$(port); ADMIN=$(port)
  extra=""
  if [ "$store" = postgres ]; then
    printf 'bench-password' > "$d/pg.password"; chmod 600 "$d/pg.password"
    printf '%s' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$d/secret.key"; chmod 600 "$d/secret.key"
    extra="backend = \"postgres\"
url = \"postgres://postgres@127.0.0.1:$PGPORT/relay\"
password_file = \"pg.password\""
  fi
  cat > "$d/relay.toml" <<CFG
[smtp]
listen = ["127.0.0.1:${PORT[$store]}"]
max_connections_per_ip = 1000
[upstream]
address = "127.0.0.1:$SINK"
pool_size = 64
[tracking]
base_url = "http://127.0.0.1:$HTTP"
secret_file = "secret.key"
[http]
listen = "127.0.0.1:$HTTP"
[admin]
listen = "127.0.0.1:$ADMIN"
[store]
$extra
[log]
level = "warn"
CFG
  target/release/pixelrelay -c "$d/relay.toml" serve 2>"$d/log" & pids+=($!)
done
for p in $SINK $HAP ${PORT[sled]} ${PORT[postgres]}; do wait_port "$p"; done

echo "== SMTP, $N pipelined messages at 10 connections, $ROUNDS rounds"
declare -A SUM
# The order rotates each round, so that no target always runs right after another (whose
# indexer may still be finishing its last batches).
order=(haproxy sled postgres)
for r in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    path=${order[$(( (i + r - 1) % 3 ))]}
    case $path in haproxy) P=$HAP;; *) P=${PORT[$path]};; esac
    out=$($LOAD 127.0.0.1:$P "$W/msg.eml" "$N" 10)
    rate=$(sed -E 's/.*msgs_per_s=([0-9.]+).*/\1/' <<<"$out")
    p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$out")
    printf "round %s %-9s %9s msgs/s  p99 %s ms\n" "$r" "$path" "$rate" "$p99"
    SUM[$path]=$(python3 -c "print(${SUM[$path]:-0} + $rate)")
  done
done
python3 - "${SUM[haproxy]}" "${SUM[sled]}" "${SUM[postgres]}" <<'PY'
import sys
h, s, p = map(float, sys.argv[1:])
print(f"sled/haproxy={s/h:.2f}x  postgres/haproxy={p/h:.2f}x  postgres/sled={p/s:.2f}x "
      f"(the PostgreSQL store costs the SMTP path {max(0.0, 1 - p/s) * 100:.0f} %)")
PY
# Every message recorded in the database behind the relay, once its indexer catches up.
want=$((N * ROUNDS)); t0=$(date +%s.%N)
for _ in $(seq 600); do
  got=$(PGPASSWORD=bench-password "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d relay -Atc \
    "SELECT count(*) FROM messages WHERE delivery IS NOT NULL")
  [ "$got" -ge "$want" ] && break
  sleep 0.1
done
echo "messages recorded with their reply in PostgreSQL: $got of $want ($(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s after the last round)"

# 3. Two pixel-only nodes over the same database (each its own journal and indexer), a
#    keep-alive burst of BURST seconds against both at once (one wrk each, cycling through the
#    tokens of 10 000 messages), then how long until every answered hit is an open in the
#    database: the index lag a load balancer in front of two pixel nodes leaves behind.
BURST=${PG_BENCH_BURST:-10}
echo "== index lag after a ${BURST} s keep-alive burst against two pixel nodes"
PSQL() { PGPASSWORD=bench-password "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d relay -Atc "$1"; }
PIXEL_BENCH_PG_URL="postgres://postgres@127.0.0.1:$PGPORT/relay" PIXELRELAY_PG_PASSWORD=bench-password \
  PIXEL_BENCH_SECRET="$W/postgres/secret.key" PIXEL_BENCH_TOKENS="$W/tokens.txt" \
  cargo test --release -q --test pixel_bench -- --ignored --exact pixel_bench_seed_postgres >/dev/null 2>&1
cat > "$W/pixel.lua" <<LUA
local t, i = {}, 0
for l in io.lines("$W/tokens.txt") do t[#t + 1] = l end
request = function() i = i % #t + 1; return wrk.format("GET", "/o/" .. t[i] .. ".gif") end
LUA
declare -A PX
for node in px1 px2; do
  d="$W/$node"; mkdir -p "$d"; PX[$node]=$(port); ADMIN=$(port)
  cp "$W/postgres/secret.key" "$W/postgres/pg.password" "$d/"
  cat > "$d/relay.toml" <<CFG
[smtp]
listen = []
[upstream]
address = "127.0.0.1:$SINK"
[tracking]
base_url = "http://127.0.0.1:${PX[$node]}"
secret_file = "secret.key"
[http]
listen = "127.0.0.1:${PX[$node]}"
[admin]
listen = "127.0.0.1:$ADMIN"
[store]
backend = "postgres"
url = "postgres://postgres@127.0.0.1:$PGPORT/relay"
password_file = "pg.password"
[log]
level = "warn"
CFG
  target/release/pixelrelay -c "$d/relay.toml" serve 2>"$d/log" & pids+=($!)
done
for node in px1 px2; do wait_port "${PX[$node]}"; done
before=$(PSQL "SELECT count(*) FROM opens")
wrks=()
for node in px1 px2; do
  wrk -t1 -c32 -d"${BURST}s" -s "$W/pixel.lua" "http://127.0.0.1:${PX[$node]}" > "$W/wrk-$node.txt" 2>&1 &
  wrks+=($!)
done
wait "${wrks[@]}"
t0=$(date +%s.%N)
served=0
for node in px1 px2; do
  n=$(awk '/requests in/ {print $1}' "$W/wrk-$node.txt"); served=$((served + n))
  echo "$node: $(awk '/Requests\/sec/ {print $2}' "$W/wrk-$node.txt") req/s, $n answered"
done
until [ $(( $(PSQL "SELECT count(*) FROM opens") - before )) -ge "$served" ]; do sleep 0.1; done
t1=$(date +%s.%N)
sleep 1
stored=$(( $(PSQL "SELECT count(*) FROM opens") - before ))
python3 -c "print(f'every answered hit an open in PostgreSQL {$t1 - $t0:.1f} s after the burst; '
             f'{$served} answered, {$stored} opens stored ({$served / $BURST:.0f} hits/s over the burst)')"
