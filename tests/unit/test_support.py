"""bot.text.support: the claim terms of a written text, the ones its source lacks, and the sentence it rests on."""

from __future__ import annotations

from bot.text.support import claim_terms, rests_on, unsupported_terms

SPEC = "This is version 0.21 of the Open Sync specification, published on 3 March 2021 by Anna Müller."


def test_claim_terms_are_names_numbers_and_quoted_terms():
    terms = claim_terms('In 1066, Duke William of Normandy paid thirty-one pounds, 30.5% of "the royal purse", '
                        "in the 11th century; see COVID-19 and version 1.2.3.")
    for t in ("1066", "Duke", "William", "Normandy", "thirty-one", "30.5%", "the royal purse", "11th", "COVID-19",
              "1.2.3"):
        assert t in terms
    assert "In" not in terms and "see" not in terms  # a common word starting a sentence names nothing
    assert claim_terms("you should wash your hands often.") == []


def test_a_changed_number_is_unsupported():
    assert unsupported_terms("It is version 2.", SPEC) == ["2"]
    assert unsupported_terms("It was published in 2020.", SPEC) == ["2020"]
    assert unsupported_terms("It is version 0.21, published in March 2021.", SPEC) == []
    assert unsupported_terms("Version 1.2.4 is out.", "Version 1.2.3 is out.") == ["1.2.4"]


def test_a_swapped_name_is_unsupported():
    assert unsupported_terms("William founded Normandy.", "Rollo founded Normandy in 911.") == ["William"]
    assert unsupported_terms("It was written by Anna Schmidt.", SPEC) == ["Schmidt"]


def test_an_unsupported_claim_is_caught_and_a_supported_one_passes():
    source = "Staff must report a lost badge to Security within 24 hours. A new badge costs 15 euros."
    assert unsupported_terms("Report it to Security within 24 hours.", source) == []
    assert set(unsupported_terms("Report it to HR within 48 hours.", source)) == {"HR", "48"}
    assert unsupported_terms('It costs "fifteen euros".', source) == ['fifteen euros']  # quoted: verbatim only


def test_spelled_numbers_compare_by_value():
    assert unsupported_terms("Thirty people came.", "30 people came.") == []
    assert unsupported_terms("30 people came.", "Thirty people came.") == []
    assert unsupported_terms("It holds 30.0 litres.", "It holds thirty litres.") == []
    assert unsupported_terms("About seven million square kilometres.", "about 7,000,000 square kilometres") == []
    assert unsupported_terms("In the tenth century.", "In the 10th century.") == []
    assert unsupported_terms("Twenty-one days.", "21 days") == []
    assert unsupported_terms("Thirty-two days.", "21 days") == ["Thirty-two"]
    assert unsupported_terms("It cost 3 million.", "It cost three million.") == []


def test_names_tolerate_case_accents_plurals_possessives_and_stems():
    assert unsupported_terms("Herve's army", "Hervé led it.") == []
    assert unsupported_terms("The Normans' export", "A Norman export") == []
    assert unsupported_terms("European control", "Western Europe controlled it") == []
    assert unsupported_terms("Patients should rest.", "patients should rest at home") == []
    assert unsupported_terms("The Euro rose", "European control") == ["Euro"]  # too short to count as a stem
    assert unsupported_terms("in the 1100s", "by 1100") == []
    assert unsupported_terms("Covid-19 spread", "COVID 19 spread") == []


def test_the_sentence_an_answer_rests_on():
    sentences = ["The Normans came to Normandy.", "Rollo signed a treaty with Charles in 911.", "Rollo was a Viking."]
    assert rests_on("Rollo signed it in 911.", sentences) == 1
    assert rests_on("A Viking.", sentences) == 2
    assert rests_on("Nothing alike here.", sentences) is None
