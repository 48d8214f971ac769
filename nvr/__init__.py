"""Evidence-grade NVR: recording, archive, retention, integrity and access.

The ``nvr`` package is the bottom of the house (settings, clock, errors, database, registry) and also holds
the two entry points that sit on top of everything else: the recorder supervisor and the command line.
See docs/design/layers.md for the import rules a test enforces.
"""

__version__ = "0.1.0"
