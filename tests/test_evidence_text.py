"""Quoted note passages as a clinician reads them: whole words, marked where cut."""

from __future__ import annotations

from cds_service.serving.explain import snap_to_words

NOTE = "Patient is a 54 year-old white female.\n Patient has a history of medication review due."


def test_a_passage_cut_inside_words_widens_to_them() -> None:
    assert snap_to_words("te female. Patient has a hist", NOTE) == "…white female. Patient has a history…"


def test_passages_at_the_edges_keep_one_ellipsis() -> None:
    assert snap_to_words("Patient is a 54", NOTE) == "Patient is a 54…"
    assert snap_to_words("review due.", NOTE) == "…review due."


def test_a_passage_not_found_is_left_as_decoded() -> None:
    assert snap_to_words("not in the note", NOTE) == "not in the note"
