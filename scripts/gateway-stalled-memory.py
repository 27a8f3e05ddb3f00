#!/usr/bin/env python3
"""Memory per relayed connection with a stalled client: keel-gateway between N clients that never read
and a back-end that sends to each as fast as it can. Prints the gateway's RSS before and after, per
connection, and how much the back-end got to send (TCP pushed back on it).

    scripts/gateway-stalled-memory.py [GATEWAY_BINARY] [CONNECTIONS] [SECONDS]
"""
import os, selectors, socket, subprocess, sys, time

binary = sys.argv[1] if len(sys.argv) > 1 else ".build/release/keel-gateway"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5

backend = socket.socket()
backend.bind(("127.0.0.1", 0))
backend.listen(1024)
backend.setblocking(False)
port = backend.getsockname()[1]

gateway = subprocess.Popen([binary, "--port", "0", "--threads", "2", "--backend", f"127.0.0.1:{port}"],
                           stdout=subprocess.PIPE, text=True)
line = gateway.stdout.readline()
while "listening on" not in line:
    line = gateway.stdout.readline()
gateway_port = int(line.strip().rsplit(":", 1)[1])

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for entry in f:
            if entry.startswith("VmRSS:"):
                return int(entry.split()[1])

time.sleep(0.5)
before = rss_kib(gateway.pid)
clients = []
for i in range(count):
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that never reads
    c.connect(("127.0.0.1", gateway_port))
    clients.append(c)

selector = selectors.DefaultSelector()
chunk = b"x" * 65536
sent = 0
deadline = time.time() + seconds
accepted = 0
sent_before_last_second = None
while time.time() < deadline:
    if sent_before_last_second is None and time.time() > deadline - 1:
        sent_before_last_second = sent
    try:
        while True:
            conn, _ = backend.accept()
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_WRITE)
            accepted += 1
    except BlockingIOError:
        pass
    for key, _ in selector.select(timeout=0.05):
        try:
            sent += key.fileobj.send(chunk)
        except BlockingIOError:
            pass
after = rss_kib(gateway.pid)
last_second = sent - (sent_before_last_second or 0)
print(f"connections {count} (back-end accepted {accepted}); the back-end sent {sent / 1048576:.1f} MiB in {seconds:.0f} s "
      f"(mostly into its own kernel send buffers), {last_second / 1048576:.2f} MiB in the last second (pushed back)")
print(f"gateway RSS {before} KiB idle, {after} KiB with {count} stalled clients: "
      f"{(after - before) / count:.0f} KiB per relayed connection")
gateway.terminate()
gateway.wait()
