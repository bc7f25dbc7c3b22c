"""commonsyncd: the daemon that keeps folders in sync (watching, peers, discovery, control API).

Only the entry point exists so far; the daemon itself is built on the library in later work.
"""
