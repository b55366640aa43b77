#!/usr/bin/env bash
# Postfix with pixelrelay as a milter, against the same Postfix with no milter and against
# Postfix relaying to pixelrelay as its relayhost, in one run, into smtp-sink. The client is
# examples/smtpload (10 reused connections, one recipient per message, the 12.6 KB QP
# newsletter). For each: messages/s and p99 as the client sees them (Postfix's 250 after the
# dot: the milter runs before it), and end to end (until smtp-sink has every message).
# Usage: bench/milter.sh [MESSAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
N=${1:-3000}
ROUNDS=${2:-3}
C=10
for tool in smtp-sink postfix python3; do
  command -v "$tool" >/dev/null || { echo "bench/milter.sh: needs $tool"; exit 2; }
done
cargo build --release -q --bin pixelrelay --example smtpload --example nullmilter
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

# MILTER_BENCH_MESSAGE=file sends that message instead (e.g. one that gets no pixel, to see
# what the milter costs without a body replacement).
if [ -n "${MILTER_BENCH_MESSAGE:-}" ]; then cp "$MILTER_BENCH_MESSAGE" "$W/msg.eml"; else python3 bench/make_message.py > "$W/msg.eml"; fi
SINK=$(port); RELAY=$(port); HTTP=$(port); MILTER=$(port); MTA=$(port); NULLM=$(port); REPLM=$(port)
mkdir -p "$W/relay" "$W/null" "$W/repl"
# MILTER_BENCH_UNIX=1: both milters on UNIX-domain sockets instead of loopback TCP.
if [ -n "${MILTER_BENCH_UNIX:-}" ]; then
  MILTER_LISTEN="unix:$W/relay/milter.sock"; MILTER_USE="unix:$W/relay/milter.sock"
  NULL_LISTEN="unix:$W/null/milter.sock"; NULL_USE="unix:$W/null/milter.sock"
  REPL_LISTEN="unix:$W/repl/milter.sock"; REPL_USE="unix:$W/repl/milter.sock"
else
  MILTER_LISTEN="127.0.0.1:$MILTER"; MILTER_USE="inet:127.0.0.1:$MILTER"
  NULL_LISTEN="127.0.0.1:$NULLM"; NULL_USE="inet:127.0.0.1:$NULLM"
  REPL_LISTEN="127.0.0.1:$REPLM"; REPL_USE="inet:127.0.0.1:$REPLM"
fi
# The floor: a milter that negotiates what pixelrelay's does and then does nothing.
target/release/examples/nullmilter "$NULL_LISTEN" >/dev/null & NPID=$!; pids+=($NPID)
# The floor for a milter that rewrites the body: the same, sending the body back with 160
# bytes added (Postfix then takes a new body into its queue file, as with pixelrelay's).
target/release/examples/nullmilter --replace-body "$REPL_LISTEN" >/dev/null & XPID=$!; pids+=($XPID)
smtp-sink -u nobody -h sink.localhost -m 1000 127.0.0.1:$SINK 1024 & pids+=($!)
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
[milter]
listen = "$MILTER_LISTEN"
[log]
level = "warn"
CFG
# MILTER_BENCH_BIN=path runs that pixelrelay binary instead (A/B runs of two builds).
"${MILTER_BENCH_BIN:-target/release/pixelrelay}" -c "$W/relay/relay.toml" serve 2>"$W/relay.log" & RPID=$!; pids+=($RPID)
[ -n "${MILTER_BENCH_PIDFILE:-}" ] && echo "$RPID" > "$MILTER_BENCH_PIDFILE"

D="$W/pf"; mkdir -p "$D/etc" "$D/spool" "$D/data"; : > "$D/etc/main.cf"
cp /usr/share/postfix/master.cf.dist "$D/etc/master.cf"
pc() { postconf -c "$D/etc" "$@"; }
pc -e "config_directory=$D/etc" "queue_directory=$D/spool" "data_directory=$D/data" \
  "maillog_file=$D/maillog" "maillog_file_prefixes=$D" "compatibility_level=3.6" \
  "myhostname=mta.localhost" "mydomain=localhost" "mydestination=" "local_recipient_maps=" \
  "local_transport=error:5.1.1 local delivery disabled" "alias_maps=" "alias_database=" \
  "relayhost=[127.0.0.1]:$SINK" "inet_interfaces=loopback-only" "inet_protocols=ipv4" \
  "mynetworks=127.0.0.0/8" "smtpd_relay_restrictions=permit_mynetworks, reject" \
  "smtp_dns_support_level=disabled" "smtp_host_lookup=native" "lmtp_host_lookup=native" \
  "smtpd_peername_lookup=no" "smtpd_client_connection_count_limit=0" "default_process_limit=200" \
  "milter_default_action=accept" "local_header_rewrite_clients=" "smtp_destination_recipient_limit=1"
pc -F '*/*/chroot = n'
pc -M# smtp/inet
pc -M "127.0.0.1:$MTA/inet=127.0.0.1:$MTA inet n - n - - smtpd"
chown postfix "$D/data"
postfix -c "$D/etc" start >/dev/null 2>&1
for p in $SINK $RELAY $MTA; do wait_port "$p"; done
if [ -n "${MILTER_BENCH_UNIX:-}" ]; then
  for sock in "$W/relay/milter.sock" "$W/null/milter.sock" "$W/repl/milter.sock"; do
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    # Postfix's smtpd runs as the postfix user.
    chgrp postfix "$sock"; chmod g+rw "$sock"
  done
else
  wait_port "$MILTER"; wait_port "$NULLM"; wait_port "$REPLM"
fi

sent() { grep -c "status=sent" "$D/maillog" 2>/dev/null || true; }
# Postfix set up as MODE (plain | milter | relayhost), reloaded.
setup() {
  case $1 in
    plain) pc -e "smtpd_milters=" "relayhost=[127.0.0.1]:$SINK" ;;
    milter) pc -e "smtpd_milters=$MILTER_USE" "relayhost=[127.0.0.1]:$SINK" ;;
    relayhost) pc -e "smtpd_milters=" "relayhost=[127.0.0.1]:$RELAY" ;;
    nullmilter) pc -e "smtpd_milters=$NULL_USE" "relayhost=[127.0.0.1]:$SINK" ;;
    replacemilter) pc -e "smtpd_milters=$REPL_USE" "relayhost=[127.0.0.1]:$SINK" ;;
  esac
  postfix -c "$D/etc" reload >/dev/null 2>&1
  # Let the reload settle: a probe message through the new set-up.
  $LOAD 127.0.0.1:$MTA "$W/msg.eml" 20 2 >/dev/null
}
declare -A R P E CPU
# A process's CPU time so far, in clock ticks (user + system): pixelrelay's, or the
# do-nothing milter's in its rounds.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {
  local mode=$1 round=$2 before t0 out t1
  local pid=$RPID
  [ "$mode" = nullmilter ] && pid=$NPID
  [ "$mode" = replacemilter ] && pid=$XPID
  before=$(sent)
  c0=$(cpu "$pid")
  t0=$(date +%s.%N)
  out=$($LOAD 127.0.0.1:$MTA "$W/msg.eml" "$N" "$C")
  until [ "$(sent)" -ge $((before + N)) ]; do sleep 0.05; done
  t1=$(date +%s.%N)
  CPU[$mode.$round]=$(python3 -c "print(f'{($(cpu "$pid") - $c0) * 1e6 / $(getconf CLK_TCK) / $N:.0f}')")
  R[$mode.$round]=$(sed -E 's/.*msgs_per_s=([0-9.]+).*/\1/' <<<"$out")
  P[$mode.$round]=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$out")
  E[$mode.$round]=$(python3 -c "print(f'{$N/($t1-$t0):.0f}')")
  printf "%-13s #%s %12s %9s %14s %12s\n" "$mode" "$round" "${R[$mode.$round]}" "${P[$mode.$round]}" "${E[$mode.$round]}" "${CPU[$mode.$round]}"
}
printf "%-16s %12s %9s %14s %12s\n" "postfix+" "accepted/s" "p99_ms" "delivered/s" "milter_us/msg"
for round in $(seq "$ROUNDS"); do
  for mode in ${MILTER_BENCH_MODES:-plain milter nullmilter replacemilter relayhost}; do setup $mode; run $mode "$round"; done
done
[ -n "${MILTER_BENCH_MODES:-}" ] && exit 0
python3 - "$ROUNDS" <<PY
import statistics, sys
R = {$(for k in "${!R[@]}"; do printf "'%s': %s, " "$k" "${R[$k]}"; done)}
E = {$(for k in "${!E[@]}"; do printf "'%s': %s, " "$k" "${E[$k]}"; done)}
n = int(sys.argv[1])
def med(d, mode): return statistics.median(d[f"{mode}.{r}"] for r in range(1, n + 1))
for mode in ("milter", "nullmilter", "replacemilter", "relayhost"):
    print(f"{mode}/plain: accepted {med(R, mode)/med(R, 'plain'):.2f}x, delivered {med(E, mode)/med(E, 'plain'):.2f}x"
          f" (medians of {n} rounds)")
PY
echo "pixelrelay log warnings: $(grep -c -i warn "$W/relay.log" || true)"
grep -i warn "$W/relay.log" | head -5 || true
