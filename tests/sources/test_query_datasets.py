"""The dataset of an API query is named by what the query asks for, not by how it is fetched
(QA: a rerun with a politer rate made a second dataset holding the same records)."""

import pytest

from pipeline.jobs import dataset_slug
from sources.eol import Options as EolOptions
from sources.gbif import Options as GbifOptions
from sources.ifcb_dashboard import IfcbDashboardOptions
from sources.inaturalist import Options as InatOptions

TRANSPORT = {"rate": 0.2, "timeout_s": 5.0, "max_retries": 1, "api_base_url": "http://127.0.0.1:9/v1/",
             "user_agent": "polite/1.0", "cache_dir": "/elsewhere", "retry_after_max_s": 10.0}

CASES = [
    (GbifOptions, {"taxon_key": 3329049},
     {**TRANSPORT, "page_size": 100, "max_records": 500, "poll_interval_s": 5.0, "batch_rows": 10},
     [{"taxon_key": 1}, {"filters": {"country": "DK"}}, {"media_type": None}]),
    (InatOptions, {"api_filters": {"taxon_id": 47158}},
     {**TRANSPORT, "per_page": 30, "max_pages": 2, "photo_size": "large", "keep_unknown_license": True},
     [{"api_filters": {"taxon_id": 1}}, {"research_only": False}]),
    (EolOptions, {"page_ids": [46578889, 328598]},
     {**{k: v for k, v in TRANSPORT.items() if k != "cache_dir"}, "image_size": "small", "keep_unknown_license": True},
     [{"page_ids": [46578889]}, {"images_per_page": 10}]),
    (IfcbDashboardOptions, {"base_url": "https://ifcb-data.whoi.edu", "dataset": "mvco"},
     {k: v for k, v in TRANSPORT.items() if k in ("rate", "timeout_s", "max_retries", "user_agent", "cache_dir")},
     [{"dataset": "other"}, {"start_date": "2020-01-01"}, {"include_skipped": True}]),
]


@pytest.mark.parametrize("options, query, transport, other_queries", CASES,
                         ids=["gbif", "inaturalist", "eol", "ifcb_dashboard"])
def test_a_query_keeps_its_dataset_whatever_the_transport(options, query, transport, other_queries):
    name = dataset_slug(None, options(**query))
    assert name.startswith("query-")
    assert dataset_slug(None, options(**query, **transport)) == name
    for other in other_queries:
        assert dataset_slug(None, options(**{**query, **other})) != name, other


def test_the_order_of_eol_page_ids_does_not_make_another_dataset():
    assert dataset_slug(None, EolOptions(page_ids=[1, 2])) == dataset_slug(None, EolOptions(page_ids=[2, 1]))


def test_an_input_still_names_its_dataset():
    assert dataset_slug("exports/0000066-140928181241064.zip", GbifOptions(taxon_key=1)) == "0000066-140928181241064"
