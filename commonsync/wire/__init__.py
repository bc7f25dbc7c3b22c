"""From a byte stream to an authenticated session between two devices: the Noise handshake
(:mod:`.handshake`), the encrypted transport (:mod:`.transport`), the channel over any anyio
byte stream (:mod:`.channel`) and the session's flow-controlled messages (:mod:`.session`).

Knows devices and messages, never folders or files. May import :mod:`commonsync.formats` and
:mod:`commonsync.errors`.
"""
