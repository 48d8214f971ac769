"""Built-in demo cameras: a pre-encoded H.264 test pattern served over RTSP in real time.

Used by ``nvr demo``, by the recorder's tests and by the ingest benchmark, so none of them needs real cameras.
"""

from nvr.demo.pattern import Pattern, default_cache_dir, encode_pattern
from nvr.demo.rtsp import DemoRtspServer

__all__ = ["DemoRtspServer", "Pattern", "default_cache_dir", "encode_pattern"]
