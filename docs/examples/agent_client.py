#!/usr/bin/python3
"""Talk to allot-agent over its Unix socket (docs/enforce.md, "The agent").

Needs Debian's python3-msgpack. Usage:
    agent_client.py SOCKET check org/api [KEY]
    agent_client.py SOCKET acquire org/batch [MEMORY_MB [VCORES]]
    agent_client.py SOCKET stats
"""
import socket
import struct
import sys

import msgpack


class Agent:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.next_id = 0

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("agent closed the connection")
            buf += chunk
        return buf

    def call(self, op, **args):
        """Send one request, return its result; raise on an error reply."""
        self.next_id += 1
        body = msgpack.packb({"id": self.next_id, "op": op, "args": args})
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        (length,) = struct.unpack(">I", self._recv_exact(4))
        reply = msgpack.unpackb(self._recv_exact(length))
        if not reply["ok"]:
            raise RuntimeError("%s: %s" % (reply["error"], reply["message"]))
        return reply["result"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    agent = Agent(sys.argv[1])
    op = sys.argv[2]
    if op == "check":
        args = {"path": sys.argv[3], "cost": 1}
        if len(sys.argv) > 4:
            args["key"] = sys.argv[4]
        d = agent.call("check", **args)
        if d["delayed"]:
            print("serve after %.3f s" % (d["retry_after_ns"] / 1e9))
        elif d["allowed"]:
            print("serve%s (%d left)" % (" (shadow)" if d["shadow"] else "",
                                         d["remaining"]))
        else:
            print("reject (%s), retry in %.3f s" % (d["reason"],
                                                    d["retry_after_ns"] / 1e9))
    elif op == "acquire":
        args = {"path": sys.argv[3]}
        if len(sys.argv) > 4:
            args["memory_mb"] = int(sys.argv[4])
        if len(sys.argv) > 5:
            args["vcores"] = int(sys.argv[5])
        d = agent.call("acquire", **args)
        if not d["allowed"]:
            print("refused (%s)" % d["reason"])
            return
        print("holding slot %d" % d["slot"])
        # ... run the application, then give the slot back (closing the
        # connection gives back every slot it holds, too):
        agent.call("release", slot=d["slot"])
    elif op == "stats":
        s = agent.call("stats")
        print("rules %d at version %d (%d behind), age %d ms, from disk: %s"
              % (s["rules"], s["catalog_version"], s["versions_behind"],
                 s["age_ms"], s["from_disk"]))
        for r in s["rule_stats"]:
            print("  %s v%d admitted %d rejected %d" % (
                r["path"], r["rule_version"], r["total"]["admitted"],
                r["total"]["rejected"]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
