"""Text from the record is untrusted: handling it is linear in its length and bounded (hardening issue).

Found by the campaign: a tag pattern over note narratives rescanned the rest of the text from every `<`
(100 kB of `<` took 11 s and blocked every other request). Each input below would take minutes to hours
with a backtracking pattern; the alarm is a hang guard, not a speed measurement (benchmarks measure speed).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from cds_service.fhir.notes import MAX_NOTE_CHARS, note_text, xhtml_to_text
from cds_service.safety.interactions import resolution

HOSTILE = ["<" * 1_000_000, "<a " * 300_000, "&" * 1_000_000, "<" * 500_000 + ">", "x" * 1_000_000]


@pytest.fixture
def hang_guard() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise TimeoutError("text handling did not finish: a super-linear pattern is back")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("markup", HOSTILE, ids=["lt", "open-tags", "amp", "one-long-tag", "plain"])
def test_hostile_narratives_are_read_in_one_pass(markup: str, hang_guard: None) -> None:
    composition = {"resourceType": "Composition", "section": [{"title": "Plan", "text": {"div": markup}}]}
    text = note_text(composition)
    assert text is None or len(text) <= MAX_NOTE_CHARS


def test_narratives_keep_their_words_and_lines() -> None:
    div = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Start <b>warfarin</b> &amp; check INR</p><br/>Next</div>'
    assert xhtml_to_text(div) == "Start warfarin & check INR\n\nNext"
    assert xhtml_to_text("a < b and c > d") == "a d"  # a tag is anything between < and >, as before
    assert xhtml_to_text("no tags < here") == "no tags < here"


@pytest.mark.parametrize("name", ["a" * 1_000_000, "Warfarin " * 100_000, "(" * 1_000_000, "1 MG / " * 100_000])
def test_hostile_drug_names_resolve_in_bounded_time(name: str, hang_guard: None) -> None:
    found = resolution(name)
    assert found.truncated  # only the display's head is read; the cache holds that, not a megabyte
