"""The unit layer: no root, no network namespace, no kernel (docs/layout.md). A package so that
its test modules may share names with the real-kernel suites beside it (test_cache.py)."""
