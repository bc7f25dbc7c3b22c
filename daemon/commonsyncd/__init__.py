"""commonsyncd: the daemon that keeps folders in sync (watching, peers, discovery, control
API), and the ``commonsync`` command that drives it.

``__version__`` is read from the installed package's metadata, so that pyproject.toml's
``version`` is the one place a release number is written (``--version`` prints it).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("commonsync")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
