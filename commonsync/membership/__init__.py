"""A folder's members and their roles, as a signed, hash-chained log that every device checks
(SPEC.md §15).

:mod:`.entries` holds the entry format (encoding, signing, hashing); :mod:`.log` the rules:
who may write which entry, how forks merge, and the state (members, roles, devices, epochs,
invitations) they give; :mod:`.epochs` wraps an epoch's secret for each device; and
:mod:`.invitations` derives an invitation's key from its secret. Pure: no I/O and no clock.
May import :mod:`commonsync.formats` and :mod:`commonsync.errors`.
"""
