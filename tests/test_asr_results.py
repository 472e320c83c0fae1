"""Recogniser results: Vosk's JSON into Word and AsrResult."""

import json

import attrs
import pytest

from siprecd.asr.results import AsrResult, Word, from_vosk_json


def vosk_final(*words, text=None):
    result = [{"word": w, "start": s, "end": e, "conf": c} for w, s, e, c in words]
    return json.dumps({"result": result, "text": text if text is not None else
                       " ".join(w[0] for w in words)})


def test_a_final_result_becomes_one_utterance_with_its_words():
    [result] = from_vosk_json(vosk_final(("안녕", 0.5, 0.9, 0.8), ("하세요", 0.9, 1.3, 1.0)))
    assert result == AsrResult("안녕 하세요", (Word("안녕", 0.5, 0.9, 0.8),
                                              Word("하세요", 0.9, 1.3, 1.0)), final=True)
    assert (result.start, result.end) == (0.5, 1.3)


def test_offset_moves_every_word_time():
    [result] = from_vosk_json(vosk_final(("a", 0.25, 0.5, 1.0)), offset=10.0)
    assert result.words == (Word("a", 10.25, 10.5, 1.0),)


@pytest.mark.parametrize("document", [
    '{"partial" : "안녕"}', '{"text" : ""}', '{"partial": ""}', {"text": "  "},
])
def test_partial_and_empty_results_give_nothing(document):
    assert from_vosk_json(document) == []


def test_bytes_are_read_as_json_and_a_non_object_is_refused():
    assert from_vosk_json(vosk_final(("a", 0, 1, 1)).encode())[0].text == "a"
    with pytest.raises(ValueError, match="expected a JSON object"):
        from_vosk_json("[1, 2]")


def test_text_without_word_times_is_kept():
    [result] = from_vosk_json('{"text": "hello there"}')
    assert result.words == () and result.start is None and result.text == "hello there"


def test_results_are_frozen_values():
    result = AsrResult("a", [Word("a", 0.0, 0.1, 1.0)])
    assert isinstance(result.words, tuple)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.text = "b"
