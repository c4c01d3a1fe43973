"""Which extra a command needs: the checks themselves (the e2e install test runs them where the
extras are really missing)."""

import pytest

from mmpipe.extras import MODULES, MissingExtra, missing, missing_extra, require


def test_every_extra_is_installed_in_the_dev_environment():
    assert missing(*MODULES) == []
    require("mmpipe serve", "serve", "moderate")  # does not raise


def test_an_unknown_extra_is_a_bug_not_a_user_error():
    with pytest.raises(ValueError, match="no extra 'gpu'"):
        missing("gpu")


def test_a_failed_import_names_the_extra_and_the_one_line_that_installs_it():
    try:
        import fastapi.no_such_module  # noqa: F401 - a real import that fails
    except ModuleNotFoundError as exc:
        error = missing_extra(exc, "mmpipe serve")
    assert isinstance(error, MissingExtra) and error.extras == ["serve"]
    assert str(error) == ("mmpipe serve needs mmpipe's serve extra, which is not installed: "
                          "pip install 'mmpipe[serve]'")


def test_a_module_no_extra_provides_is_left_to_surface_as_it_is():
    with pytest.raises(ModuleNotFoundError) as info:
        import mmpipe_no_such_package  # noqa: F401
    assert missing_extra(info.value, "mmpipe embed") is None


def test_several_extras_are_installed_by_one_line():
    assert str(MissingExtra("mmpipe demo", ["moderate", "samples"])).endswith(
        "extras, which are not installed: pip install 'mmpipe[moderate,samples]'")
