#!/usr/bin/env python3
"""Build testing/Traces/stratum.pcap (``python testing/Traces/make_stratum_trace.py``), crafted
offline with scapy like make_traces.py (no packet is sent):

1. container 172.17.0.5 -> 198.51.100.20:3333, mining.subscribe then mining.authorize: logged
   (two methods, one connection) and one notice;
2. container 172.17.0.6 -> 198.51.100.21:443, Monero-style "login" naming agent XMRig: logged;
3. host 192.168.1.5 (not a container subnet) -> 198.51.100.20:3333 mining.subscribe: ignored;
4. container 172.17.0.5 -> 198.51.100.22:8545, an ordinary JSON-RPC "eth_blockNumber": ignored.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_traces import OUT, T0, Clock, tcp_session, wrpcap  # noqa: E402

SUB = (b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
       b'{"id":2,"method":"mining.authorize","params":["wallet.worker","x"]}\n')
LOGIN = (b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4Awallet","pass":"x",'
         b'"agent":"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0","algo":["rx/0"]}}\n')
ETH = b'{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}\n'
ANSWER = b'{"id":1,"result":[[["mining.notify","ae6812eb4cd7735a"]],"08000002",4],"error":null}\n'


def build() -> list:
    clock = Clock(T0 + 500)
    pkts = []
    pkts += tcp_session(clock, "172.17.0.5", 41001, "198.51.100.20", 3333, SUB, ANSWER)
    clock.tick(1.0)
    pkts += tcp_session(clock, "172.17.0.6", 41002, "198.51.100.21", 443, LOGIN, b'{"id":1}\n')
    clock.tick(1.0)
    pkts += tcp_session(clock, "192.168.1.5", 41003, "198.51.100.20", 3333, SUB, ANSWER)
    clock.tick(1.0)
    pkts += tcp_session(clock, "172.17.0.5", 41004, "198.51.100.22", 8545, ETH, b'{"id":1}\n')
    return pkts


if __name__ == "__main__":
    wrpcap(str(OUT / "stratum.pcap"), build())
