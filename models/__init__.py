"""Model definitions. Importing this package registers SDAR with transformers' Auto classes."""
from . import sdar  # noqa: F401
