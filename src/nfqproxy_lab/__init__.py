"""The network-namespace lab: a client, a node running the proxy, an uplink and backends."""
