"""Command line: ``robustssl VERB``; see ``robustssl --help``."""
