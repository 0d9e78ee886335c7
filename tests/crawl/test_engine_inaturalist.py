"""iNaturalist: taxon lookup, observation photos and failures, on recorded
real API answers (``search/inaturalist-api/v1`` of the shared data)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import pytest

from crawl.engines import inaturalist
from crawl.engines.inaturalist import INaturalistConfig
from tests.conftest import shared_file
from tests.crawl.fakes import (
    HttpFetcher,
    RecordedFetcher,
    answer,
    local_server,
    params_of,
)

CONFIG = INaturalistConfig()


def recorded(name: str) -> Any:
    path = shared_file(f"search/inaturalist-api/v1/{name}")
    return json.loads(path.read_text(encoding="utf-8"))


def test_urls_carry_name_rank_licenses_and_grade():
    config = INaturalistConfig(api_url="http://127.0.0.1:4000/v1/", licenses=("cc0",))

    taxa = inaturalist.taxa_url("Danaus plexippus", config, rank="species")
    assert taxa.startswith("http://127.0.0.1:4000/v1/taxa?q=Danaus%20plexippus&")
    assert params_of(taxa)["rank"] == "species"

    observations = params_of(inaturalist.observations_url(48662, config, page=2))
    assert observations["taxon_id"] == "48662"
    assert observations["quality_grade"] == "research"
    assert observations["photos"] == "true"
    assert observations["photo_license"] == "cc0"
    assert observations["order_by"] == "votes"
    assert observations["page"] == "2"

    auto = INaturalistConfig(taxon_lookup="autocomplete")
    assert "/v1/taxa/autocomplete?q=Vespa&" in inaturalist.taxa_url("Vespa", auto)


def test_the_exact_name_wins_over_the_first_hit():
    taxa = recorded("get_taxa.json")["results"]
    assert taxa[0]["name"] == "Nicrophorus vespilloides"  # the API's first hit

    picked = inaturalist.pick_taxon(taxa, "Nicrophorus vespillo", config=CONFIG)
    assert picked is not None and picked["id"] == 131878
    by_common = inaturalist.pick_taxon(taxa, "yellow-legged clearwing", config=CONFIG)
    assert by_common is not None and by_common["id"] == 362871

    assert inaturalist.pick_taxon(taxa, "Vespa", config=CONFIG) is None
    loose = INaturalistConfig(exact_name=False)
    assert inaturalist.pick_taxon(taxa, "Vespa", config=loose)["id"] == 70118


def test_autocomplete_answer_finds_the_family():
    taxa = recorded("get_taxa_autocomplete.json")["results"]
    picked = inaturalist.pick_taxon(taxa, "Vespidae", config=CONFIG)
    assert picked is not None and picked["rank"] == "family"
    assert inaturalist.taxon_title(picked) == (
        "Vespidae (Hornets, Paper Wasps, Potter Wasps, and Allies)"
    )


def test_search_pages_through_observations_and_skips_unlicensed_photos():
    config = INaturalistConfig(per_page=1)
    fetcher = RecordedFetcher(
        answer(recorded("get_observations_page1.json")),
        answer(recorded("get_observations_page2.json")),
    )
    outcome = asyncio.run(
        inaturalist.search(
            "Danaus plexippus", fetcher, limit=10, taxon_id=48662, config=config
        )
    )

    assert [params_of(url)["page"] for url in fetcher.asked] == ["1", "2"]
    assert outcome.status == "ok"
    # Page 2's only photo is "all rights reserved" (no license code).
    [monarch] = outcome.results
    assert monarch.image_url == (
        "https://static.inaturalist.org/photos/92152429/original.jpg?1598551272"
    )
    assert monarch.page_url == "https://www.inaturalist.org/observations/57754375"
    assert monarch.title == "Danaus plexippus (Monarch)"
    assert (monarch.width, monarch.height) == (1188, 1188)
    assert monarch.author == "(c) samroom, some rights reserved (CC BY-NC)"
    assert monarch.license == "cc-by-nc"
    assert monarch.rank == 1


def test_lookup_then_observations_of_the_taxon_found():
    fetcher = RecordedFetcher(
        answer(recorded("get_taxa.json")),
        answer(recorded("get_nonexistent_observation.json")),
    )
    outcome = asyncio.run(
        inaturalist.search("Nicrophorus vespillo", fetcher, limit=5, rank="species")
    )

    assert params_of(fetcher.asked[0])["q"] == "Nicrophorus vespillo"
    assert params_of(fetcher.asked[1])["taxon_id"] == "131878"
    assert outcome.status == "empty"  # the recorded answer has no observation


def test_an_unknown_name_is_empty_without_asking_for_observations():
    fetcher = RecordedFetcher(answer(recorded("get_taxa.json")))
    outcome = asyncio.run(inaturalist.search("Vespa crabro", fetcher, limit=5))
    assert outcome.status == "empty"
    assert "Vespa crabro" in (outcome.error or "")
    assert len(fetcher.asked) == 1


def test_photo_sizes_and_several_photos_per_observation():
    observation = recorded("get_observation.json")["results"][0]
    config = INaturalistConfig(photo_size="large", photos_per_observation=2)

    results = inaturalist.photo_results([observation], config=config)

    assert [r.image_url for r in results] == [
        "https://static.inaturalist.org/photos/24355315/large.jpeg?1536150664",
        "https://static.inaturalist.org/photos/24355313/large.jpeg?1536150659",
    ]
    # 1445 x 1057 and 2048 x 1364 fitted into 1024 px.
    assert [(r.width, r.height) for r in results] == [(1024, 749), (1024, 682)]
    assert [r.rank for r in results] == [1, 2]
    assert results[0].title == "Lixus bardanae"
    assert results[0].thumbnail_url.endswith("/photos/24355315/medium.jpeg?1536150664")


def test_urls_without_a_query_string_and_other_hosts():
    observation = recorded("get_observations_by_id.json")["results"][0]
    [result] = inaturalist.photo_results([observation], config=CONFIG)
    assert result.image_url == (
        "https://inaturalist-open-data.s3.amazonaws.com/photos/24355315/original.jpeg"
    )


def test_licenses_and_quality_grade_are_enforced_on_the_answer():
    cc_by = recorded("get_observation.json")["results"]
    assert inaturalist.photo_results(cc_by, config=CONFIG)
    only_cc0 = INaturalistConfig(licenses=("cc0",))
    assert inaturalist.photo_results(cc_by, config=only_cc0) == []

    needs_id = recorded("get_observation_with_sounds.json")["results"]
    assert needs_id[0]["quality_grade"] == "needs_id"
    assert inaturalist.photo_results(needs_id, config=CONFIG) == []
    any_grade = INaturalistConfig(quality_grade="")
    [bat] = inaturalist.photo_results(needs_id, config=any_grade)
    assert bat.title == "Pipistrellus pipistrellus (Common Pipistrelle)"
    assert (bat.license, bat.author) == ("cc0", "no rights reserved")


def test_rate_limit_blocks_and_refusals_carry_the_message():
    blocked = asyncio.run(
        inaturalist.search("Apis mellifera", RecordedFetcher(answer(b"", 429)), limit=5)
    )
    assert blocked.status == "blocked"

    refusal = {
        "error": {"original": {"error": "per_page must be <= 200"}},
        "status": 422,
    }
    refused = asyncio.run(
        inaturalist.search(
            "Apis mellifera",
            RecordedFetcher(answer(refusal, 422)),
            limit=5,
            taxon_id=47219,
        )
    )
    assert refused.status == "error"
    assert refused.error == "http_422: per_page must be <= 200"


def test_a_failure_while_paging_keeps_the_first_results():
    config = INaturalistConfig(per_page=1)
    fetcher = RecordedFetcher(
        answer(recorded("get_observations_page1.json")), answer(b"", 500)
    )
    outcome = asyncio.run(
        inaturalist.search(
            "Danaus plexippus", fetcher, limit=5, taxon_id=48662, config=config
        )
    )
    assert outcome.status == "ok"
    assert len(outcome.results) == 1
    assert "http_500" in (outcome.error or "")


@pytest.fixture
def local_api() -> Iterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 answering /v1/taxa and /v1/observations with
    recorded answers; yields its API URL and the paths it was asked."""
    answers = {
        "/v1/taxa": json.dumps(recorded("get_taxa.json")).encode(),
        "/v1/observations": json.dumps(recorded("get_observation.json")).encode(),
    }
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = answers.get(urlsplit(self.path).path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body or b'{"error": "not found", "status": 404}')

        def log_message(self, *args: Any) -> None:
            pass

    with local_server(Handler) as base_url:
        yield f"{base_url}/v1", asked


def test_a_configured_base_url_reaches_a_local_server(local_api):
    api_url, asked = local_api
    config = INaturalistConfig(api_url=api_url)

    # The observation answer was recorded for another taxon; the server does
    # not mind, and the test is about the way there and back.
    outcome = asyncio.run(
        inaturalist.search(
            "Nicrophorus vespillo", HttpFetcher(), limit=3, config=config
        )
    )

    assert [urlsplit(path).path for path in asked] == ["/v1/taxa", "/v1/observations"]
    assert params_of(asked[1])["taxon_id"] == "131878"
    assert outcome.status == "ok"
    assert outcome.url.startswith(api_url + "/observations?")
    assert outcome.results[0].page_url == (
        "https://www.inaturalist.org/observations/16227955"
    )

    wrong = INaturalistConfig(api_url=api_url + "/nothing")
    missing = asyncio.run(inaturalist.search("x", HttpFetcher(), limit=3, config=wrong))
    assert missing.status == "error"
    assert missing.error == "http_404: not found"
