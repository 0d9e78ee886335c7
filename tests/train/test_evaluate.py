"""Evaluation: the per-rank, sibling and retrieval arithmetic checked by hand,
and zero-shot reports on a real labelled folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.conftest import small_train_config
from tests.train.fixture_shards import lineage, ranks
from train.config import read_config
from train.evaluate import class_texts, evaluate
from train.metrics import (
    rank_accuracy,
    retrieval_recall,
    sibling_confusion,
    topk_accuracy,
)
from train.models import create
from train.report import read_metrics, write_report

HOMO, SAPIENS, SAPIENS_SAPIENS = "Q171283", "Q15978631", "Q3238275"


@pytest.fixture(scope="module")
def homo_lineages(tmp_path_factory) -> tuple[dict, dict]:
    """Real lineages and ranks: the harvest of Homo from the Wikidata JSON dump."""
    from kg.backend import EmbeddedGraph
    from kg.harvest import HarvestConfig, harvest
    from kg.ingest import IngestConfig, ingest
    from tests.conftest import shared_file

    store = tmp_path_factory.mktemp("homo") / "kg"
    ingest(
        IngestConfig(
            source=shared_file("wikidata/onezoom-entities.json.bz2"), store=store
        )
    )
    graph = EmbeddedGraph(store)
    try:
        rows = harvest(
            graph, HarvestConfig(kind="taxa", roots=[HOMO]), None
        ).to_pylist()
    finally:
        graph.close()
    return {r["qid"]: r["lineage"] for r in rows}, {r["qid"]: r["rank"] for r in rows}


def scores(results) -> dict[str, tuple[int, int]]:
    return {s.rank: (s.correct, s.total) for s in results}


def test_rank_accuracy_on_the_real_homo_lineages(homo_lineages):
    lineages, taxon_ranks = homo_lineages
    assert lineages[SAPIENS_SAPIENS] == [HOMO, SAPIENS, SAPIENS_SAPIENS]
    assert taxon_ranks == {
        HOMO: "genus",
        SAPIENS: "species",
        SAPIENS_SAPIENS: "subspecies",
    }
    true = [SAPIENS_SAPIENS, SAPIENS_SAPIENS, SAPIENS, HOMO]
    predicted = [SAPIENS_SAPIENS, SAPIENS, SAPIENS_SAPIENS, SAPIENS]
    # image 1: all right. image 2: the species H. sapiens is the truth's
    # species ancestor, so right at genus and species, wrong at subspecies.
    # image 3: predicted H. s. sapiens lies under the true species: right at
    # genus and species. image 4: the true genus Homo is an ancestor of the
    # prediction: right at genus; Homo has no species or subspecies.
    result = rank_accuracy(true, predicted, lineages, taxon_ranks)
    assert [s.rank for s in result] == ["genus", "species", "subspecies"]
    assert scores(result) == {"genus": (4, 4), "species": (3, 3), "subspecies": (1, 2)}


def test_rank_accuracy_and_siblings_across_the_flower_tree():
    daisy, dandelion, sunflower, rose, tulip = (
        "Q90000005", "Q90000007", "Q90000009", "Q90000012", "Q90000015",
    )  # fmt: skip
    lineages = {q: lineage(q) for q in (daisy, dandelion, sunflower, rose, tulip)}
    true = [daisy, daisy, rose, tulip, sunflower]
    predicted = [daisy, dandelion, tulip, rose, sunflower]
    result = scores(rank_accuracy(true, predicted, lineages, ranks()))
    # daisy->dandelion shares class, order, family (Asteraceae), not genus;
    # rose<->tulip share only the class Magnoliopsida
    assert result == {
        "class": (5, 5),
        "order": (3, 5),
        "family": (3, 5),
        "genus": (2, 5),
        "species": (2, 3),  # rose and tulip are genera: no species ancestor
    }
    confusion = sibling_confusion(true, predicted, lineages)
    assert (confusion.errors, confusion.sibling_errors) == (3, 0)  # no shared genus
    # two species of one genus are siblings
    lineages["Q1"], lineages["Q2"] = ["Q90000004", "Q1"], ["Q90000004", "Q2"]
    confusion = sibling_confusion(["Q1", "Q1", "Q1"], ["Q2", "Q1", rose], lineages)
    assert (confusion.errors, confusion.sibling_errors, confusion.share) == (2, 1, 0.5)


def test_topk_accuracy_counts_ties_against_the_target():
    scores_ = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.5], [0.1, 0.2, 0.3]])
    result = topk_accuracy(scores_, np.array([0, 2, 0]), ks=(1, 2, 5))
    # row 1: the target ties another class at the top, which ranks it second;
    # row 2: the target is last
    assert result == {
        "top1": pytest.approx(1 / 3),
        "top2": pytest.approx(2 / 3),
        "top5": 1.0,
    }
    flat = topk_accuracy(np.zeros((4, 5)), np.array([0, 1, 2, 3]), ks=(1, 5))
    assert flat == {"top1": 0.0, "top5": 1.0}  # a collapsed model earns nothing


def test_retrieval_recall_counts_shared_captions_once():
    # three images, two of them captioned alike ("daisy"); unit vectors
    images = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    texts = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    ids = np.array([0, 0, 1])
    recall = retrieval_recall(images, texts, ids, ks=(1, 2))
    # image 1 (0.8, 0.6): "daisy" 0.8 vs other 0.96 -> rank 1: miss at 1
    assert recall["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert recall["image_to_text_R@2"] == 1.0
    # "daisy" finds image 0 first (a daisy); the other caption's best image
    # is image 2 (0.8), behind image 1 (0.96): a miss at 1, a hit at 2
    assert recall["text_to_image_R@1"] == 0.5
    assert recall["text_to_image_R@2"] == 1.0


def test_class_texts_follow_the_configured_sources():
    meta = {
        "label": "daisy",
        "kg_texts": [
            {"source": "scientific_name", "text": "Bellis perennis"},
            {"source": "label", "text": "daisy"},
            {"source": "alias", "text": "lawn daisy"},
            {"source": "common_name:en", "text": "common daisy"},
        ],
    }
    assert class_texts(meta, ["label", "scientific_name"]) == [
        "daisy",
        "Bellis perennis",
    ]
    assert class_texts(meta, ["common_name", "label"]) == ["common daisy", "daisy"]
    assert class_texts(meta, ["common_name:fr"]) == ["daisy"]  # falls back to the label


@pytest.fixture(scope="module")
def tiny_folder(flowers, tmp_path_factory) -> Path:
    """Three real photos of each class, one folder per class."""
    folder = tmp_path_factory.mktemp("folder")
    for name in ("daisy", "dandelion", "rose", "sunflower", "tulip"):
        (folder / name).mkdir()
        for path in sorted((flowers / name).glob("*.jpg"))[:3]:
            shutil.copy(path, folder / name / path.name)
    return folder


def test_zero_shot_on_a_folder_writes_the_report(tiny_folder, tmp_path):
    config = read_config(
        small_train_config(
            f"train.evaluate.folder={tiny_folder}",
            "train.evaluate.retrieval_split=null",
        )
    )
    torch.manual_seed(0)
    parts = create(config.model, tmp_path / "configs")
    result = evaluate(parts, config.evaluate, None, torch.device("cpu"))
    assert (result["images"], result["classes"]) == (15, 5)
    assert result["top5"] == 1.0 and 0.0 <= result["top1"] <= 1.0
    assert result["ranks"] == []  # folder classes have no ranks
    assert result["siblings"]["errors"] == round(15 * (1 - result["top1"]))

    result["step"] = 0
    paths = write_report(result, [result], tmp_path / "logs", tmp_path / "report")
    assert [p.name for p in paths] == ["report.md", "report.json", "accuracy.png"]
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["latest"]["top1"] == result["top1"]
    assert "| top-5 | 1.0000 |" in paths[0].read_text()


def test_zero_shot_on_shards_scores_every_rank(flower_run, tmp_path):
    config = read_config(small_train_config())
    parts = create(config.model, tmp_path / "configs")
    result = evaluate(
        parts, config.evaluate, flower_run / "shards", torch.device("cpu"), ranks()
    )
    by_rank = {r["rank"]: r for r in result["ranks"]}
    assert list(by_rank) == ["class", "order", "family", "genus", "species"]
    assert by_rank["class"]["accuracy"] == 1.0  # every flower is in Magnoliopsida
    assert by_rank["genus"]["total"] == 15  # every class has a genus ancestor
    assert by_rank["species"]["total"] == 9  # daisy, dandelion, sunflower: 3 each
    assert by_rank["genus"]["correct"] == round(
        result["top1"] * 15
    )  # genus = class here
    retrieval = result["retrieval"]
    assert retrieval["pairs"] == 15
    assert set(retrieval) >= {"image_to_text_R@1", "text_to_image_R@10"}


def test_metrics_of_resumed_runs_merge_by_step(tmp_path):
    for version, rows in ((0, "1,2.0\n2,1.5\n"), (1, "2,1.4\n3,1.2\n")):
        folder = tmp_path / f"version_{version}"
        folder.mkdir()
        (folder / "metrics.csv").write_text("step,train/loss\n" + rows)
    assert read_metrics(tmp_path)["train/loss"] == [(1, 2.0), (2, 1.4), (3, 1.2)]
