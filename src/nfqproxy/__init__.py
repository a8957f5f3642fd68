"""nfqproxy: ClusterIP service routing in userspace through NFQUEUE."""

__version__ = "0.1.0"
