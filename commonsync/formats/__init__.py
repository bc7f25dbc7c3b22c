"""What commonsync's bytes mean: identities and device IDs, folder keys, chunks, signed and
sealed records, version vectors, paths, and the wire protocol's messages.

Pure data and cryptography, no I/O beyond reading and writing a key file: everything here can
be tested byte for byte against the vectors in ``protocol/``. May import only
:mod:`commonsync.errors`.
"""
