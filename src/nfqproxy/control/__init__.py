"""Inspection of the running proxy over a local unix socket: `nfqproxy services`, `flows`
and `explain` (server.py in the proxy, client.py in the command)."""
