"""htx: a precision laboratory for HTDemucs.

The folder is the package: ``core/htx/`` is ``htx``; the built-in plugins are ``plugins/htx_plugins/``.
"""

__version__ = "0.1.0"
