"""Photo keys: one key per iNaturalist photo across its URL forms and sources; stable hashes otherwise."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.photokey import inat_photo_id, normalise_url, photo_key, photo_key_of
from tests.sources.conftest import DATA

INAT_FORMS = [
    "https://static.inaturalist.org/photos/{id}/{size}.jpg?1598551272",
    "https://inaturalist-open-data.s3.amazonaws.com/photos/{id}/{size}.jpeg",
    "http://inaturalist-open-data.s3.us-east-1.amazonaws.com/photos/{id}/{size}.JPG",
    "https://s3.amazonaws.com/inaturalist-open-data/photos/{id}/{size}.png",
    "https://s3.amazonaws.com/static.inaturalist.org/photos/{id}/{size}.jpg",
    "https://www.inaturalist.org/photos/{id}",
    "//static.inaturalist.org/photos/{id}/{size}.jpg",
]


@given(st.integers(min_value=1, max_value=10**10), st.sampled_from(["square", "small", "medium", "large",
                                                                     "original"]),
       st.sampled_from(INAT_FORMS))
def test_every_inat_url_form_gives_the_photo_key(pid, size, form):
    url = form.format(id=pid, size=size)
    assert inat_photo_id(url) == pid
    assert photo_key(url) == f"inat-photo-{pid}"


def test_same_photo_through_api_dump_and_gbif_has_one_key():
    obs = json.loads((DATA / "inaturalist/api_v1/get_observations_page1.json").read_text())["results"][0]
    api_url = obs["photos"][0]["url"]  # static.inaturalist.org, as the API serves it
    pid = obs["photos"][0]["id"]
    dump_url = f"https://inaturalist-open-data.s3.amazonaws.com/photos/{pid}/original.jpg"
    gbif_url = f"https://inaturalist-open-data.s3.amazonaws.com/photos/{pid}/original.jpeg"
    eol_source = f"https://www.inaturalist.org/photos/{pid}"
    keys = {photo_key(api_url), photo_key(dump_url), photo_key(gbif_url),
            photo_key_of(eol_source, "https://content.eol.org/data/media/aa/bb/cc/12345.jpg")}
    assert keys == {f"inat-photo-{pid}"}


def test_non_inat_urls_are_not_mistaken():
    for url in ["https://arter.dk/media/747389ab.jpg", "https://www.inaturalist.org/observations/57754375",
                "https://example.org/photos/123/medium.jpg", "https://notinaturalist.org/photos/1/a.jpg"]:
        assert inat_photo_id(url) is None
        assert photo_key(url).startswith("url-")


@given(st.sampled_from(["http", "https", "HTTP"]), st.sampled_from(["Example.ORG", "example.org"]),
       st.sampled_from(["", ":80", ":443"]), st.text(alphabet="abcxyz0123/_-", max_size=30),
       st.sampled_from(["", "#frag"]))
def test_url_key_ignores_scheme_case_default_port_and_fragment(scheme, host, port, path, frag):
    if (scheme.lower(), port) in (("http", ":443"), ("https", ":80"), ("HTTP", ":443")):
        port = ""
    url = f"{scheme}://{host}{port}/img/{path}{frag}"
    key = photo_key(url)
    assert key == photo_key(f"https://example.org/img/{path}")
    assert "." not in key


@given(st.text(min_size=1, max_size=80).filter(lambda s: s.strip()))
def test_keys_are_dot_free_and_deterministic(url):
    key = photo_key(url)
    assert key == photo_key(url) and "." not in key


@pytest.mark.parametrize("url", ["http://[broken/x.jpg", "//[x/medium.jpg", "https://h]/a.png#f", "http://[::1/p"])
def test_text_that_is_no_url_still_gets_a_key(url):
    """Messy sources list URLs urllib cannot parse (an unclosed IPv6 bracket): they get a key from
    their text (fragment cut) instead of stopping the ingest; the column-wise keys agree."""
    import pyarrow as pa

    from sources.photokey import photo_keys

    key = photo_key(url)
    assert key.startswith("url-") and key == photo_key(url.strip() + "  ")
    assert photo_keys(pa.array([url, "https://example.org/a.jpg", url])).to_pylist()[::2] == [key, key]


def test_no_url_no_key():
    assert photo_key(None) is None and photo_key("  ") is None and photo_key_of(None, "") is None
    assert normalise_url("HTTP://A.b/c#d") == "https://a.b/c"


# URLs built from parts that exercise every branch of photo_keys' fast path and its fallback
_SCHEMES = st.sampled_from(["http://", "https://", "HTTPS://", "Http://", "ftp://", "//", "", " https://"])
_HOSTS = st.sampled_from(["static.inaturalist.org", "Static.iNaturalist.ORG", "www.inaturalist.org",
                          "inaturalist-open-data.s3.amazonaws.com", "s3.amazonaws.com/inaturalist-open-data",
                          "example.org", "Example.ORG", "example.org:80", "example.org:8080", "user@host.org",
                          "[::1]", "[broken", "host]", "ex-ample.org.", "bücher.de", ""])
_PATHS = st.one_of(
    st.just(""), st.just("/"),
    st.integers(0, 10**12).map(lambda i: f"/photos/{i}/large.jpg"),
    st.sampled_from(["/photos/00123", "/photos/0/x.png", "/Photos/77.jpg", "/photos/12abc", "//double/slash",
                     "/a b.jpg", "/ä.jpg", "/p%20q.jpg", "/x\\y.jpg", "/t\tab.jpg", "/semi;colon.jpg"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12).map(lambda t: "/" + t))
_TAILS = st.sampled_from(["", "?", "?1598551272", "?a=1&b=2", "?x?y", "#frag", "?q#f", " ", "\n", "\u00a0"])


@given(st.lists(st.one_of(st.none(), st.tuples(_SCHEMES, _HOSTS, _PATHS, _TAILS).map("".join)),
                min_size=1, max_size=12), st.booleans())
def test_photo_keys_column_is_photo_key_of_each_url(urls, repeat):
    import pyarrow as pa

    from sources.photokey import photo_keys

    values = urls * 3 if repeat else urls  # repeats take the once-per-distinct-URL path
    assert photo_keys(pa.array(values, pa.string())).to_pylist() == [photo_key(u) for u in values]
