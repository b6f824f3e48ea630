"""The package version, in one place: pyproject.toml reads it (``[tool.setuptools.dynamic]``),
``--version``, ``/healthz`` and the ``cvmfs_ephemeral_build_info`` metric report it. A module
of its own, importing nothing, so that ``--version`` costs no import of the server stack and the
image (which runs the source tree, not an installed distribution) knows it too."""

__version__ = "0.1.0"
