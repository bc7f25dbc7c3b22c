"""A community relay's client: the relay protocol's messages (:mod:`.wire`, also what the
relay server in ``commonsyncd.relay.server`` speaks) and the control connection and relayed channels
of a device (:mod:`.client`).

May import :mod:`commonsync.wire`, :mod:`commonsync.formats` and :mod:`commonsync.errors`;
not the sync engine, which is on the same floor and knows nothing of relays.
"""
