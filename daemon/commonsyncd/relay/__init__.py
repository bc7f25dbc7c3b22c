"""The community relay server (``commonsync relay serve``): a program for the person who
hosts a relay for an association, not for its members' devices.

:mod:`.server` admits members, splices their relayed sessions and enforces the limits;
:mod:`.config` reads ``relay.toml``. The relay protocol itself is the library's
(:mod:`commonsync.relay.wire`), shared with the client every device runs.
"""
