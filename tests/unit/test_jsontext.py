"""shim.jsontext: the encoder used where the json module is missing (python3-minimal) writes what
json.dumps writes."""

import json

from shim import jsontext

SAMPLES = [
    {"a": [1, 2, {"b": None, "c": True}], "z": "é\"\n\t\\\x01", "e": {}, "l": [], "x": 1.5, "k": {"q": [[]]}},
    [], {}, "plain", 0, -3, False, {"emoji": "\U0001F600", "nested": [[{"deep": [None]}]]},
]


def test_fallback_matches_json_dumps():
    for value in SAMPLES:
        assert "\n".join(jsontext._lines(value, 2, 0, "")) == json.dumps(value, indent=2, sort_keys=True)
        assert json.loads("\n".join(jsontext._lines(value, 2, 0, ""))) == value
