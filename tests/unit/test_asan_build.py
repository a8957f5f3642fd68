"""Under `make asan`, the extensions in use must be the sanitized build."""

from __future__ import annotations

import os

import pytest


@pytest.mark.skipif(os.environ.get("NFQPROXY_EXPECT_ASAN") != "1", reason="only under make asan")
def test_the_sanitized_extensions_are_the_ones_loaded() -> None:
    import nfqproxy._fastpath
    import nfqproxy._maglev

    for module in (nfqproxy._fastpath, nfqproxy._maglev):
        assert module.__file__ is not None and "build/asan" in module.__file__
        with open(module.__file__, "rb") as shared_object:
            assert b"__asan_init" in shared_object.read()
