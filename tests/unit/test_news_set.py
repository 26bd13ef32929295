"""bench/news_set.py: the SummEval copy becomes a folder that `docent eval summary` reads, as prose."""

from __future__ import annotations

import io
import pickle

import pytest

from bench import news_set
from bot.eval.datasets import load_folder


def test_ptb_spacing_is_closed_again():
    assert news_set.detokenize("Merson said he did n't , ( really ) . `` It 's £ 23million , '' he said .") \
        == "Merson said he didn't, (really). \"It's £23million,\" he said."


def _item(n: int) -> dict:
    return {"src": f"Article {n} says this . It says that too .", "ref_summ": f"Reference {n} .",
            "sys_summs": {m: {"sys_summ": f"{m} on article {n} .", "scores": {"relevance": 3.0}}
                          for m in news_set.SYSTEMS}}


def test_folder_holds_articles_references_and_systems_in_one_order(tmp_path):
    assert news_set.write_folder({"dm-test-b": _item(2), "cnn-test-a": _item(1)}, tmp_path) == 2
    items = load_folder(tmp_path)
    assert [x["id"] for x in items] == ["cnn-test-a", "dm-test-b"]
    assert items[1]["document"] == "Article 2 says this. It says that too."
    assert items[1]["reference"] == "Reference 2."
    assert items[1]["systems"]["M22-bart"] == "M22 on article 2."
    assert len(items[0]["systems"]) == len(news_set.SYSTEMS)


def test_a_file_other_than_the_pinned_one_is_refused(tmp_path):
    other = tmp_path / "data.pkl"
    other.write_bytes(pickle.dumps({"x": _item(1)}))
    with pytest.raises(SystemExit, match="expected 008f1639"):
        news_set.load(other)


def test_the_unpickler_loads_no_class():
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        news_set._PlainData(io.BytesIO(pickle.dumps(ValueError))).load()
