"""htx's built-in plugins, one sub-package per kind. They register through the ``htx`` entry points,
exactly as third-party plugins do."""
