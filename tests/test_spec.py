"""spec.py: the study spec grammar (`A->B,C`, `A<->B`, `A:B`, `A+B->C`) and the prepared-copy notation `NAME@WxH`."""
import pytest

from segbench.spec import SpecError, Transfer, is_prepared, parse_spec, parse_specs, prepared_copy, prepared_parts


@pytest.mark.parametrize("spec, expected", [
    ("gta5->cityscapes", [Transfer("gta5", ("cityscapes",))]),
    ("gta5->cityscapes,bdd100k", [Transfer("gta5", ("cityscapes", "bdd100k"))]),
    ("gta5:cityscapes", [Transfer("gta5", ("cityscapes",))]),
    ("a<->b", [Transfer("a", ("b",)), Transfer("b", ("a",))]),
    ("acdc-fog->acdc-night", [Transfer("acdc-fog", ("acdc-night",))]),
])
def test_spec_grammar(spec, expected):
    assert parse_spec(spec) == expected


def test_unquoted_arrow_is_detected_and_explained():
    with pytest.raises(SpecError) as err:
        parse_spec("gta5-")
    msg = str(err.value)
    assert "redirect" in msg and "'gta5->TARGET'" in msg and "gta5:TARGET" in msg


@pytest.mark.parametrize("bad", ["gta5", "a,b->c", "->c", "a->", "a<->b,c", "a->b c"])
def test_bad_specs_fail_with_the_grammar(bad):
    with pytest.raises(SpecError, match="->"):
        parse_spec(bad)


def test_specs_with_one_source_merge():
    assert parse_specs(["a->b", "a:c,b"]) == [Transfer("a", ("b", "c"))]


def test_a_prepared_copy_is_named_and_read_back_here_alone():
    assert prepared_parts("gta5@1280x720") == ("gta5", "1280x720") and is_prepared("gta5@1280x720")
    assert prepared_parts("gta5") == ("gta5", "") and not is_prepared("gta5")
    assert prepared_copy("gta5", "1280x720") == "gta5@1280x720"
    assert parse_spec("gta5@1280x720->cityscapes") == [Transfer("gta5@1280x720", ("cityscapes",))]
    with pytest.raises(SpecError, match="names a prepared copy as NAME@WxH"):
        parse_spec("gta5@->cityscapes")
