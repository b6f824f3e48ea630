"""The CernVM-FS repository format, written natively (see ``docs/cvmfs-format.md``).

One module per concept: ``keys`` (RSA keys and certificate), ``objects`` (content-addressed
store), ``chunking`` (streaming hash/compress of file content), ``catalog`` (SQLite file
catalogs), ``manifest`` (``.cvmfspublished``), ``whitelist`` (``.cvmfswhitelist``) and
``signing`` (the two RSA signature schemes). Nothing here speaks HTTP or reads the clock on its
own: times are passed in, so every byte these modules produce is reproducible in tests.
"""
