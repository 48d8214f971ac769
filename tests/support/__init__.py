"""Test-support code shared by the test suites (not collected as tests)."""
