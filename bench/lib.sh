# Helpers the bench scripts share (sourced, not run).

# A free loopback port, for a peer that cannot report the port it bound. Never the same one
# twice in a script: the kernel may hand a just-probed port out again, and two peers would then
# be given one port. The ports handed out are listed in the script's work dir ($W).
port() {
  python3 - "${W:-/tmp}/.bench-ports.$$" <<'PY'
import socket, sys
path = sys.argv[1]
try:
    taken = set(open(path).read().split())
except FileNotFoundError:
    taken = set()
for _ in range(100):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = str(s.getsockname()[1])
    s.close()
    if p not in taken:
        open(path, "a").write(p + "\n")
        print(p)
        break
else:
    sys.exit("no unused port found")
PY
}

# Waits until something accepts connections on 127.0.0.1:$1 (10 s at most).
wait_port() {
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listening on $1" >&2
  exit 1
}

# haproxy in TCP mode from 127.0.0.1:$2 to 127.0.0.1:$3 (one byte-for-byte hop), its config in
# $1; appends its pid to the caller's `pids`.
start_haproxy() {
  cat > "$1" <<CFG
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen smtp
  bind 127.0.0.1:$2
  server sink 127.0.0.1:$3
CFG
  haproxy -f "$1" -db >/dev/null 2>&1 & pids+=($!)
}
