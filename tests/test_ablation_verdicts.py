"""Ablation verdicts (issue 24, section 1) and the held-out check (section 6), on planted data.

The verdict tests build `AblationResult` frames by hand (no model): each planted effect is
known, so each verdict rule is checked on a case that must reach it and on one that must not.
"""

import numpy as np
import pytest

import moe_interp as mi
from moe_interp._grid import check_held_out


# -- check_held_out: overlapping texts, not only an identical list ---------------------------------

def test_check_held_out_refuses_an_overlap_names_the_count_the_languages_and_the_fix():
    model = mi.zoo.tiny_model("qwen3_moe")
    train = {"eng": ["The cat sat.", "Dogs bark.", "Birds sing."], "deu": ["Die Katze.", "Hunde bellen."]}
    profile = mi.profile(model, train, progress=False)
    overlapping = {"eng": ["Dogs bark.", "Fish swim.", "Birds sing."], "deu": ["Ein Vogel.", "Der Mann."]}
    with pytest.raises(ValueError) as error:
        check_held_out(profile, overlapping)
    message = str(error.value)
    assert "2 of the 5 evaluation texts" in message and "eng: 2 of 3" in message and "deu" not in message
    assert "allow_same_texts=True" in message and "held-out split" in message
    check_held_out(profile, overlapping, allow=True)                      # knowingly: no error
    check_held_out(profile, {"eng": ["Fish swim."], "deu": ["Ein Vogel."]})  # disjoint: fine


def test_check_held_out_catches_a_text_profiled_under_another_language():
    model = mi.zoo.tiny_model("qwen3_moe")
    profile = mi.profile(model, {"eng": ["The cat sat.", "Hallo Welt."]}, progress=False)
    with pytest.raises(ValueError, match=r"deu: 1 of 2"):
        check_held_out(profile, {"deu": ["Hallo Welt.", "Ein Vogel."]})


def test_check_held_out_still_refuses_the_identical_list_and_passes_stats_without_fingerprints():
    model = mi.zoo.tiny_model("qwen3_moe")
    profile = mi.profile(model, {"eng": ["The cat sat.", "Dogs bark."]}, progress=False)
    with pytest.raises(ValueError, match=r"eng: 2 of 2"):
        check_held_out(profile, {"eng": ["The cat sat.", "Dogs bark."]})
    profile.meta.pop("text_hashes", None)  # an older profile: only the list's fingerprint
    with pytest.raises(ValueError, match=r"eng: 2 of 2"):
        check_held_out(profile, {"eng": ["The cat sat.", "Dogs bark."]})
    check_held_out(profile, {"eng": ["The cat sat.", "Fish swim."]})     # cannot tell: passes unchecked
    profile.meta.clear()
    check_held_out(profile, {"eng": ["The cat sat.", "Dogs bark."]})
