#!/usr/bin/env bash
# SMTP relay throughput and latency, four paths in one run, each into Postfix's smtp-sink:
#   direct     client -> smtp-sink                       (the wire limit)
#   haproxy    client -> haproxy (TCP mode) -> smtp-sink  (the cost of one byte-for-byte hop)
#   pixelrelay client -> pixelrelay (tracking on) -> smtp-sink
#   postfix    client -> Postfix (store-and-forward) -> smtp-sink
# The client is examples/smtpload (reused connections, one recipient per message, per-message
# latency). Prints a table and the ratios. Usage: bench/smtp.sh [MESSAGES] ["CONNS ..."]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
N=${1:-20000}
CONNS=${2:-"1 10 50"}
for tool in smtp-sink haproxy postfix python3; do
  command -v "$tool" >/dev/null || { echo "bench/smtp.sh: needs $tool (apt-get install postfix haproxy)"; exit 2; }
done
cargo build --release -q --bin pixelrelay --example smtpload
LOAD=target/release/examples/smtpload
W=$(mktemp -d); chmod 755 "$W"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/pf/etc/main.cf" ] && postfix -c "$W/pf/etc" stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
. bench/lib.sh

python3 bench/make_message.py > "$W/msg.eml"
SINK=$(port); HAP=$(port); RELAY=$(port); HTTP=$(port); ADMIN=$(port); MTA=$(port)

smtp-sink -u nobody -h sink.localhost -m 1000 127.0.0.1:$SINK 1024 & pids+=($!)

start_haproxy "$W/haproxy.cfg" "$HAP" "$SINK"

mkdir -p "$W/relay"
cat > "$W/relay/relay.toml" <<CFG
[smtp]
listen = ["127.0.0.1:$RELAY"]
max_connections_per_ip = 1000
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
target/release/pixelrelay -c "$W/relay/relay.toml" serve 2>"$W/relay.log" & RPID=$!; pids+=($RPID)

D="$W/pf"; mkdir -p "$D/etc" "$D/spool" "$D/data"; : > "$D/etc/main.cf"
cp /usr/share/postfix/master.cf.dist "$D/etc/master.cf"
postconf -c "$D/etc" -e "config_directory=$D/etc" "queue_directory=$D/spool" "data_directory=$D/data" \
  "maillog_file=$D/maillog" "maillog_file_prefixes=$D" "compatibility_level=3.6" \
  "myhostname=mta.localhost" "mydomain=localhost" "mydestination=" "local_recipient_maps=" \
  "local_transport=error:5.1.1 local delivery disabled" "alias_maps=" "alias_database=" \
  "relayhost=[127.0.0.1]:$SINK" "inet_interfaces=loopback-only" "inet_protocols=ipv4" \
  "mynetworks=127.0.0.0/8" "smtpd_relay_restrictions=permit_mynetworks, reject" \
  "smtp_dns_support_level=disabled" "smtp_host_lookup=native" "lmtp_host_lookup=native" \
  "smtpd_peername_lookup=no" "smtpd_client_connection_count_limit=0" "default_process_limit=200"
postconf -c "$D/etc" -F '*/*/chroot = n'
postconf -c "$D/etc" -M# smtp/inet
postconf -c "$D/etc" -M "127.0.0.1:$MTA/inet=127.0.0.1:$MTA inet n - n - - smtpd"
chown postfix "$D/data"
postfix -c "$D/etc" start >/dev/null 2>&1

for p in $SINK $HAP $RELAY $MTA; do wait_port "$p"; done

cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }
CLK=$(getconf CLK_TCK)
printf "%-10s %5s %8s %10s %9s %9s %12s\n" path conns msgs msgs/s p50_ms p99_ms cpu_ms/msg
declare -A RATE P99
for c in $CONNS; do
  for path in direct haproxy pixelrelay postfix; do
    case $path in direct) P=$SINK;; haproxy) P=$HAP;; pixelrelay) P=$RELAY;; postfix) P=$MTA;; esac
    n=$N; [ "$path" = postfix ] && n=$(( N < 5000 ? N : 5000 ))   # Postfix fsyncs per message
    before=$(cpu_ticks $RPID)
    out=$($LOAD 127.0.0.1:$P "$W/msg.eml" "$n" "$c")
    after=$(cpu_ticks $RPID)
    rate=$(sed -E 's/.*msgs_per_s=([0-9.]+).*/\1/' <<<"$out")
    p50=$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$out")
    p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$out")
    msgs=$(sed -E 's/.*messages=([0-9]+).*/\1/' <<<"$out")
    cpu="-"
    [ "$path" = pixelrelay ] && cpu=$(python3 -c "print(f'{($after-$before)*1000/$CLK/$msgs:.3f}')")
    RATE[$path.$c]=$rate; P99[$path.$c]=$p99
    printf "%-10s %5s %8s %10s %9s %9s %12s\n" "$path" "$c" "$msgs" "$rate" "$p50" "$p99" "$cpu"
  done
done
echo
for c in $CONNS; do
  python3 - "$c" "${RATE[pixelrelay.$c]}" "${RATE[direct.$c]}" "${RATE[haproxy.$c]}" "${RATE[postfix.$c]}" \
    "${P99[pixelrelay.$c]}" "${P99[direct.$c]}" <<'PY'
import sys
c, r, d, h, p, rp99, dp99 = sys.argv[1], *map(float, sys.argv[2:])
print(f"conns={c}: pixelrelay/direct={r/d:.2f}x  pixelrelay/haproxy={r/h:.2f}x  pixelrelay/postfix={r/p:.1f}x  "
      f"added p99={rp99-dp99:.2f} ms")
PY
done
