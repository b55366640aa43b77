# Helpers the bench scripts share (sourced, not run).

# A free loopback port, for a peer that cannot report the port it bound.
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Waits until something accepts connections on 127.0.0.1:$1 (10 s at most).
wait_port() {
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listening on $1" >&2
  exit 1
}
