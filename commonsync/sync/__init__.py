"""The sync engine of one folder: the SQLite index (:mod:`.store`), scanning (:mod:`.scanner`),
deciding between versions (:mod:`.decide`), writing them safely (:mod:`.apply`), the exchange
of records and chunks with a peer (:mod:`.exchange`) and :class:`~.folder.Folder`, which puts
them together.

Everything that touches the folder's files goes through :mod:`.beneath` (no path outside the
folder, no symlink followed). May import :mod:`commonsync.wire`, :mod:`commonsync.formats`
and :mod:`commonsync.errors`; knows nothing of how peers are found or reached.
"""
