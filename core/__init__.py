"""htx: a precision laboratory for HTDemucs.

The importable package lives in ``core/``; the built-in plugins live in ``plugins/`` (``htx_plugins``).
"""

__version__ = "0.1.0"
