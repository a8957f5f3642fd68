"""The packet path: parse, look up, rewrite, verdict.

The reference path (reference.py) is the executable specification. It is plain Python
on NetfilterQueue and dpkt.
"""
