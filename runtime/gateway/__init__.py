"""Notification gateway, wire-compatible with cvmfs-gateway's notification API (docs/cvmfs-format.md, "Notifications").

``messages``: the message format; ``source``: where certificates and current manifests come
from; ``hub``: verification, the last message per repository and the subscribers; ``routes``:
the HTTP endpoints; ``notifier``: how a publishing process hands a new manifest to a gateway
(in process, or over HTTP like ``cvmfs_swissknife notify -p``).
"""
