"""Steering evidence a referee would sign: routing moved on the steered layers, the dose-response
worded by rule, and the recipe's steering claims across training seeds (issue 24, section 4)."""

import numpy as np
import pandas as pd
import pytest

import moe_interp as mi
from conftest import tiny

TRAIN = {"eng": ["The cat sat on the mat.", "Dogs bark at night.", "The sun is hot today."],
         "deu": ["Die Katze schlaeft hier.", "Hunde bellen laut.", "Die Sonne ist heiss."]}
DEV = {"eng": ["A bird sings.", "Rain falls on the roof."], "deu": ["Ein Vogel singt.", "Regen faellt aufs Dach."]}
TEST = {"eng": ["Fish swim in the sea.", "The old man reads a book."],
        "deu": ["Fische schwimmen im Meer.", "Der alte Mann liest ein Buch.", "Baeume wachsen hoch."]}


# -- routing moved: a mean over the steered layers only ------------------------------------------

def test_dose_response_of_a_middle_band_steer_averages_the_middle_band_only():
    model = tiny("qwen3_moe")                                    # MoE layers 0-3, middle band 1-2
    profile = mi.profile(model, TRAIN, progress=False)
    res = mi.steering_eval(model, profile, DEV, TEST, ["deu"], target="eng", scales=(0.0, 50.0), layers="middle",
                           k=4, samples=50, progress=False)
    row = res.dose_response().set_index("scale").loc[50.0]
    # the hand-written mean of the per-layer columns of the two steered layers
    assert row.changed == pytest.approx((row.changed_L1 + row.changed_L2) / 2)
    assert row.mass_moved == pytest.approx((row.mass_moved_L1 + row.mass_moved_L2) / 2)
    # layer 0 is upstream of the steer (untouched), layer 3 only moves downstream of it
    assert row.changed_L0 == 0 and row.mass_moved_L0 == 0 and row.mass_moved_L3 == 0
    assert row.changed_L1 > 0
