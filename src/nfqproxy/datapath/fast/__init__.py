"""The fast data path: the reference's semantics with the per-packet work in C (cext/)."""
