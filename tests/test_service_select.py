"""The selection language of ``medai serve``: parsing, errors and evaluation on tiny trees."""

from __future__ import annotations

import pytest

from medai.errors import ConfigError
from medai.service.select import (
    Exclusion,
    SelectionSyntaxError,
    evaluate_selection,
    parse_selection,
)
from medai.service.tree import Level, ParticipantRecord, SeriesRecord, StudyRecord

BRAIN = """select study
  where has series flair (Modality = "MR" and SeriesDescription in ("FLAIR", "T2-FLAIR"))
    and has series t1ce (Modality = "MR" and SeriesDescription ~ "t1.*(gd|ce|post|\\+c)"
                         and FrameOfReferenceUID = flair.FrameOfReferenceUID)"""


def _series(
    uid: str, number: int, description: str, **attributes: str | int | float
) -> SeriesRecord:
    attrs: dict[str, str | int | float] = {
        "Modality": "MR",
        "SeriesNumber": number,
        "SeriesDescription": description,
        "FrameOfReferenceUID": "for.1",
    }
    attrs.update(attributes)
    return SeriesRecord(uid, 10, attrs)


def _tree() -> list[ParticipantRecord]:
    good = StudyRecord(
        "st.good",
        "p1",
        (
            _series("s.t1", 2, "T1 pre"),
            _series("s.flair", 1, " flair "),
            _series("s.t1ce", 3, "T1 post +C"),
        ),
        attributes={"StudyDescription": "MRI Brain", "StudyDate": "20240102"},
    )
    other_for = StudyRecord(
        "st.otherfor",
        "p2",
        (
            _series("s2.flair", 1, "T2-FLAIR"),
            _series("s2.t1ce", 2, "t1_mprage_gd", FrameOfReferenceUID="for.2"),
        ),
        attributes={"StudyDescription": "MRI Brain", "StudyDate": "20240103"},
    )
    ct = StudyRecord(
        "st.ct",
        "p2",
        (_series("s3.ct", 1, "Head 5mm", Modality="CT", SliceThickness="5.0"),),
        attributes={"StudyDescription": "CT Head", "StudyDate": "20230101"},
    )
    receiving = StudyRecord(
        "st.receiving", "p3", (_series("s4.flair", 1, "FLAIR"),), complete=False
    )
    return [
        ParticipantRecord("p3", "proj", (receiving,), {"PatientSex": "F"}),
        ParticipantRecord("p2", "proj", (other_for, ct), {"PatientSex": "M", "PatientAge": 61}),
        ParticipantRecord("p1", "proj", (good,), {"PatientSex": "F", "PatientAge": 47}),
    ]


def _keys(text: str) -> list[str]:
    return [unit.key for unit in evaluate_selection(parse_selection(text), _tree()).units]


def test_brain_example_binds_flair_and_t1ce_sharing_frame_of_reference() -> None:
    result = evaluate_selection(parse_selection(BRAIN), _tree())
    assert result.level is Level.STUDY
    assert [u.key for u in result.units] == ["st.good"]
    unit = result.units[0]
    assert unit.participant == "p1"
    assert unit.study_uid == "st.good"
    assert dict(unit.series) == {"flair": ("s.flair",), "t1ce": ("s.t1ce",)}
    reasons = {e.key: e.reason for e in result.excluded}
    assert reasons["st.receiving"] == "still receiving"
    assert reasons["st.otherfor"].startswith("no series matched t1ce (")
    assert "FrameOfReferenceUID = flair.FrameOfReferenceUID" in reasons["st.otherfor"]
    assert reasons["st.ct"] == (
        'no series matched flair (Modality = "MR" and SeriesDescription in ("FLAIR", "T2-FLAIR"))'
    )


def test_binding_searches_past_the_first_candidate() -> None:
    # Two FLAIRs: only the second shares the T1ce's frame of reference.
    study = StudyRecord(
        "st",
        "p",
        (
            _series("a", 1, "FLAIR", FrameOfReferenceUID="x"),
            _series("b", 2, "FLAIR", FrameOfReferenceUID="y"),
            _series("c", 3, "T1 gd", FrameOfReferenceUID="y"),
        ),
    )
    result = evaluate_selection(parse_selection(BRAIN), [ParticipantRecord("p", "proj", (study,))])
    assert dict(result.units[0].series) == {"flair": ("b",), "t1ce": ("c",)}


def test_precedence_of_or_and_not_and_parentheses() -> None:
    # and binds tighter than or: p2's CT study qualifies through the second branch alone.
    assert _keys(
        'select study where StudyDescription = "none" and exists(StudyDate) '
        'or StudyDescription = "ct head"'
    ) == ["st.ct"]
    assert (
        _keys(
            'select study where StudyDescription = "none" and (exists(StudyDate) '
            'or StudyDescription = "ct head")'
        )
        == []
    )
    assert _keys(
        'select study where not StudyDescription = "ct head" and StudyDate > 20240102'
    ) == ["st.otherfor"]
    assert _keys(
        'select study where not (StudyDescription = "ct head" or StudyDate > 20240102)'
    ) == ["st.good"]


def test_numeric_comparisons_compare_numbers_not_text() -> None:
    # "5.0" as text is > "10" but 5 < 10 as a number.
    assert _keys("select series where SliceThickness < 10") == ["s3.ct"]
    assert _keys("select series where SliceThickness = 5") == ["s3.ct"]
    assert _keys("select series where SeriesNumber >= 3") == ["s.t1ce"]
    assert _keys("select participant where PatientAge > 50") == ["p2"]
    assert _keys("select participant where PatientAge <= 47") == ["p1"]


def test_regex_like_in_and_case_insensitive_trimmed_equality() -> None:
    assert _keys('select series where SeriesDescription = "FLAIR"') == ["s.flair"]
    assert _keys('select series where SeriesDescription ~ "^t1"') == ["s.t1", "s.t1ce", "s2.t1ce"]
    assert _keys('select series where SeriesDescription like "t1*gd"') == ["s2.t1ce"]
    assert _keys('select series where SeriesDescription in ("t2-flair", "head 5mm")') == [
        "s3.ct",
        "s2.flair",
    ]
    assert _keys('select series where SeriesDescription != "flair" and Modality = "CT"') == [
        "s3.ct"
    ]


def test_series_level_reaches_study_and_participant_attributes() -> None:
    result = evaluate_selection(
        parse_selection(
            'select series where study.StudyDescription like "mri*" and '
            'participant.PatientSex = "M"'
        ),
        _tree(),
    )
    assert [u.key for u in result.units] == ["s2.flair", "s2.t1ce"]
    assert result.units[0].study_uid == "st.otherfor"
    assert dict(result.units[0].series) == {"series": ("s2.flair",)}
    reasons = {e.key: e.reason for e in result.excluded}
    assert reasons["s4.flair"] == "still receiving"
    assert reasons["s3.ct"] == (
        "not satisfied: study.StudyDescription like \"mri*\" (study.StudyDescription is 'CT Head')"
    )


def test_participant_level_searches_all_their_series() -> None:
    result = evaluate_selection(
        parse_selection(
            'select participant where has series ct (Modality = "CT" and '
            'study.StudyDescription = "CT head") and has series fl '
            '(SeriesDescription ~ "flair")'
        ),
        _tree(),
    )
    assert [u.key for u in result.units] == ["p2"]
    assert dict(result.units[0].series) == {"ct": ("s3.ct",), "fl": ("s2.flair",)}
    assert result.excluded == (
        Exclusion(
            "p1", 'no series matched ct (Modality = "CT" and study.StudyDescription = "CT head")'
        ),
        Exclusion("p3", "study st.receiving is still receiving"),
    )


def test_without_condition_units_get_all_series_in_order() -> None:
    result = evaluate_selection(parse_selection("select study"), _tree())
    assert [u.key for u in result.units] == ["st.good", "st.ct", "st.otherfor"]
    assert dict(result.units[0].series) == {"all": ("s.flair", "s.t1", "s.t1ce")}
    assert result.excluded == (Exclusion("st.receiving", "still receiving"),)


def test_project_level_is_one_unit_with_the_matched_series() -> None:
    result = evaluate_selection(
        parse_selection('select project where has series fl (SeriesDescription ~ "flair")'),
        _tree(),
    )
    assert len(result.units) == 1
    unit = result.units[0]
    assert (unit.level, unit.key, unit.participant, unit.study_uid) == (
        Level.PROJECT,
        "proj",
        None,
        None,
    )
    assert dict(unit.series) == {"fl": ("s.flair", "s2.flair")}
    assert [e.key for e in result.excluded] == ["st.ct", "st.receiving"]


def test_count_of_series() -> None:
    assert _keys('select study where count(series where Modality = "MR") >= 3') == ["st.good"]
    assert _keys("select study where count(series) = 1") == ["st.ct"]
    result = evaluate_selection(parse_selection("select study where count(series) > 2"), _tree())
    assert result.excluded[0] == Exclusion(
        "st.ct", "not satisfied: count(series) > 2 (1 series matched)"
    )


def test_order_does_not_depend_on_input_order() -> None:
    tree = _tree()
    selection = parse_selection('select series where Modality = "MR"')
    forward = evaluate_selection(selection, tree)
    backward = evaluate_selection(selection, list(reversed(tree)))
    assert forward == backward
    assert [u.key for u in forward.units] == ["s.flair", "s.t1", "s.t1ce", "s2.flair", "s2.t1ce"]


@pytest.mark.parametrize(
    "text",
    [
        BRAIN,
        "select series",
        'select series where not (Modality = "CT" or SeriesNumber < 2.5) and exists(Rows)',
        'select participant where PatientSex = "F" or (PatientAge > 1 and PatientAge < 99)',
        'select study where SeriesDescription like "a\\"b\\\\" and count(series) != 0',
        'select project where has series a (SeriesDescription like "x*") and '
        "has series b (SeriesNumber > a.SeriesNumber)",
    ],
)
def test_round_trip_through_normalised_text(text: str) -> None:
    selection = parse_selection(text)
    again = parse_selection(str(selection))
    assert again == selection
    assert str(again) == str(selection)
    assert selection.source == text


def test_normalised_text_is_one_line_with_minimal_parentheses() -> None:
    selection = parse_selection(
        'SELECT Study WHERE ((Modality = "MR")) AND (StudyDate > 1 OR StudyDate < 0)'
    )
    assert (
        str(selection) == 'select study where Modality = "MR" and (StudyDate > 1 or StudyDate < 0)'
    )


def _syntax_error(text: str) -> SelectionSyntaxError:
    with pytest.raises(SelectionSyntaxError) as info:
        parse_selection(text)
    return info.value


def test_unclosed_parenthesis_points_at_the_end() -> None:
    text = 'select study where (Modality = "MR"'
    err = _syntax_error(text)
    assert isinstance(err, ConfigError)
    assert err.position == len(text)
    assert err.token == ""
    assert "expected ')' to close the '(' at line 1, column 20" in str(err)
    assert str(err).endswith("\n  " + text + "\n  " + " " * len(text) + "^")


def test_unknown_operator_is_named_with_a_caret() -> None:
    err = _syntax_error('select series where Modality == "MR"')
    assert (err.position, err.token) == (29, "==")
    assert "unknown operator '=='" in str(err)
    assert str(err).splitlines()[-1] == "  " + " " * 29 + "^^"


def test_misspelt_keyword_suggests_the_nearest() -> None:
    err = _syntax_error('select series\n  where Modalty = "MR"')
    assert err.token == "Modalty"
    assert err.position == 22
    assert "did you mean 'Modality'?" in str(err)
    assert "line 2, column 9" in str(err)
    assert _syntax_error('select series where modality = "MR"').token == "modality"
    assert "did you mean 'Modality'" in str(_syntax_error('select series where modality = "MR"'))


def test_trailing_garbage_is_refused() -> None:
    err = _syntax_error('select study where Modality = "MR" extra')
    assert err.token == "extra"
    assert "expected 'and', 'or' or the end" in str(err)
    assert _syntax_error("select study study").token == "study"


@pytest.mark.parametrize(
    ("text", "token", "message"),
    [
        ("select patient", "patient", "expected a level"),
        ('select series where has series a (Modality = "MR")', "has", "not available at series"),
        ('select study where flair.Modality = "MR"', "flair", "unknown scope 'flair'"),
        ('select study where series.Modality = "MR"', "series", "'series.' is reachable only"),
        ('select study where Modality ~ "t1(("', '"t1(("', "not a valid regular expression"),
        ('select study where Modality in ("MR" "CT")', '"CT"', "to close the list"),
        ('select study where Modality = "MR', '"', "unterminated string"),
        (
            "select study where has series a (Rows > 1) and has series a (Rows > 2)",
            "a",
            "already bound",
        ),
        ("select study where has series a (has series b (Rows > 1))", "has", "inside a series"),
        ("select study where Modality is 3", "is", "expected an operator"),
    ],
)
def test_other_syntax_errors_point_at_the_token(text: str, token: str, message: str) -> None:
    err = _syntax_error(text)
    assert err.token == token
    assert text[err.position : err.position + len(token)] == token
    assert message in str(err)


def test_evaluate_refuses_text_and_mixed_projects() -> None:
    with pytest.raises(TypeError, match="parse_selection"):
        evaluate_selection("select study", [])  # type: ignore[arg-type]
    tree = [ParticipantRecord("a", "one", ()), ParticipantRecord("b", "two", ())]
    with pytest.raises(ValueError, match="several projects"):
        evaluate_selection(parse_selection("select project"), tree)
