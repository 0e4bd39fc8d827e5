"""stacklevel_outside: a warning raised deep in the library names the user's line."""

import warnings

from tguide._warnings import stacklevel_outside

_LIBRARY_CODE = """
import warnings
from tguide._warnings import stacklevel_outside

def inner():
    warnings.warn("deep", UserWarning, stacklevel=stacklevel_outside("tguide.metrics"))

def outer():
    inner()
"""


def _library_module(name: str) -> dict:
    namespace: dict = {"__name__": name}
    exec(compile(_LIBRARY_CODE, f"<{name}>", "exec"), namespace)
    return namespace


def test_warning_skips_every_frame_of_the_named_packages():
    lib = _library_module("tguide.metrics.fake")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib["outer"]()  # two library frames between here and the warn call
    assert len(caught) == 1
    assert caught[0].filename == __file__


def test_frames_outside_the_named_packages_are_not_skipped():
    lib = _library_module("somewhere.else")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib["outer"]()
    assert caught[0].filename == "<somewhere.else>"  # the caller of inner(), i.e. outer()


def test_called_from_the_top_level_caller_gives_its_caller():
    def warns():
        return stacklevel_outside("no.such.package")

    assert warns() == 2
