"""The CI client: ``python -m runtime upload`` (also the ``cvmfs-ephemeral`` console script)."""
