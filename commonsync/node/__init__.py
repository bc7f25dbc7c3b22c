"""A whole device at run time: :class:`~.node.Node` holds its identity, index, folders
(:mod:`.folders`: a :class:`~commonsync.sync.folder.Folder` with its watcher and scans), the
devices it knows and how to reach them (:mod:`.peers`: dialling with backoff, accepting or
refusing strangers, one session per device; :mod:`.discovery` on the LAN; :mod:`.relay_links`
to community relays), folder offers, and the events and status of all of it.

Configuration is data passed in (:mod:`.config`); secrets and the index live in a directory
the tool names (:mod:`.state`). May import every floor below: :mod:`commonsync.sync`,
:mod:`commonsync.relay`, :mod:`commonsync.wire`, :mod:`commonsync.formats`,
:mod:`commonsync.errors`.
"""
