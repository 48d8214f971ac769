"""Recorder: a supervisor and one worker thread per active camera."""
