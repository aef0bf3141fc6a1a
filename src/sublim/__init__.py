"""sublim: reproduce, measure and audit subliminal learning."""

from sublim.errors import SublimError

__version__ = "0.1.0"
__all__ = ["SublimError", "__version__"]
