"""iNaturalist API v1 pulls through the ingest stage: a pull that continues is kept as pulls of one
dataset, its cursor committed with its records (QA: a killed or failed pull lost every page before
the cursor; continuing a pull replaced the records already ingested)."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.execute import run_ingest
from pipeline.io import SUCCESS, read_dataset
from pipeline.jobs import dataset_slug
from pipeline.runners import make_runner
from sources.http import HttpError
from sources.inaturalist import INaturalistConnector, Options
from tests.sources.conftest import DATA, Reply

API = DATA / "inaturalist/api_v1"
REPO = Path(__file__).resolve().parents[2]


def observations(n: int, first: int = 1000) -> list[dict]:
    """The two recorded observations (page 1 of /observations and /observations/{id}) cloned into
    ``n`` research-grade ones with ids ``first``, ``first + 1``..., and photo ids of their own."""
    protos = [*json.loads((API / "get_observations_page1.json").read_text())["results"],
              *json.loads((API / "get_observation.json").read_text())["results"]]
    out = []
    for k in range(n):
        obs = copy.deepcopy(protos[k % len(protos)])
        obs["id"], obs["quality_grade"] = first + k, "research"
        photos = [p.get("photo") or p for p in obs.pop("observation_photos", None) or []] or obs["photos"]
        for j, photo in enumerate(photos):
            photo["id"] = 500_000 + (first + k) * 10 + j
        obs["photos"] = photos
        out.append(obs)
    return out


class Observations:
    """The /observations endpoint over a list of observations, paged by ``id_above`` as iNaturalist
    does; ``fail`` maps an ``id_above`` to the replies to give before the page (a 500, a cut body)."""

    def __init__(self, obs: list[dict], delay_s: float = 0.0):
        self.obs, self.delay_s = obs, delay_s
        self.fail: dict[int, list[Reply]] = {}
        self.asked: list[int] = []

    def __call__(self, req) -> Reply:
        if not req.path.endswith("/observations"):
            return Reply(404, b"{}")
        above, per = int(req.query["id_above"][0]), int(req.query["per_page"][0])
        self.asked.append(above)
        if self.fail.get(above):
            return self.fail[above].pop(0)
        page = [o for o in self.obs if o["id"] > above][:per]
        return Reply(200, json.dumps({"total_results": len(page), "per_page": per, "results": page}).encode(),
                     delay_s=self.delay_s)


def pull(root: Path, url: str, clock, force: bool = False, **kw):
    """One ingest run of the query (5 observations a page) into the data root ``root``."""
    options = Options(api_base_url=url, per_page=5, cache_dir=str(root / "cache"), **kw)
    connector = INaturalistConnector(sleep=clock.sleep, clock=clock)
    return run_ingest(connector, options, None, root, make_runner("local", 1, progress=False),
                      dataset_slug(None, options), force=force)


def dataset_dir(root: Path, url: str) -> Path:
    return root / "raw" / "source=inaturalist" / f"dataset={dataset_slug(None, Options(api_base_url=url))}"


def raw_rows(root: Path) -> list[dict]:
    """Every raw record and ingest reject of the data root, in record id order."""
    rows = read_dataset(root / "raw").to_pylist() + read_dataset(root / "rejects").to_pylist()
    return sorted(rows, key=lambda r: (r["record_id"], r.get("reason") or ""))


def observation_ids(root: Path) -> list[int]:
    return sorted({int(x) for x in read_dataset(root / "raw", columns=["occurrence_id"]).column(0).to_pylist()})


def test_a_pull_that_continues_adds_the_next_pages_and_never_drops_earlier_ones(loopback, tmp_path, clock):
    api = Observations(observations(25))
    server = loopback(api)
    root = tmp_path / "data"
    first = pull(root, server.url, clock, max_pages=2)
    assert observation_ids(root) == list(range(1000, 1010))
    # a plain rerun continues after the committed cursor and adds a pull (QA: "already complete",
    # and --force replaced 1000-1009 with 1010-1019)
    second = pull(root, server.url, clock, max_pages=2)
    assert observation_ids(root) == list(range(1000, 1020))
    assert first.stats["pull"] == "pull-00000" and first.stats["cursor"] == 1009
    assert not second.skipped and second.stats["after"] == 1009 and second.stats["in"] > 0
    pull(root, server.url, clock, max_pages=2)
    assert observation_ids(root) == list(range(1000, 1025))
    folder = dataset_dir(root, server.url)
    assert sorted(p.name for p in folder.iterdir()) == ["pull-00000", "pull-00001", "pull-00002"]
    # nothing new: one request after the cursor, nothing ingested, no empty pull kept
    asked = len(api.asked)
    nothing = pull(root, server.url, clock, max_pages=2)
    assert nothing.skipped and nothing.stats["in"] == 0
    assert api.asked[asked:] == [1024]
    assert sorted(p.name for p in folder.iterdir()) == ["pull-00000", "pull-00001", "pull-00002"]
    # --force pulls the last one again in its place
    before = raw_rows(root)
    again = pull(root, server.url, clock, max_pages=2, force=True)
    assert again.stats["pull"] == "pull-00002" and again.stats["after"] == 1019
    assert raw_rows(root) == before
    # observations made since then come with the next rerun
    api.obs += observations(3, first=1025)
    pull(root, server.url, clock, max_pages=2)
    assert observation_ids(root) == list(range(1000, 1028))
    # and all of it equals one uninterrupted pull, once each, in one dataset of the raw view
    whole = tmp_path / "whole"
    pull(whole, server.url, clock)
    assert raw_rows(root) == raw_rows(whole)
    ids = read_dataset(root / "raw", columns=["record_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids))
    from pipeline.query import connect

    con = connect(root)
    assert con.execute("SELECT dataset, count(*) FROM raw GROUP BY 1").fetchall() == [
        (folder.name.removeprefix("dataset="), len(ids))]


def test_a_pull_that_gives_up_on_a_server_error_is_pulled_again_whole(loopback, tmp_path, clock):
    """QA: a 5xx give-up after two pages kept the cursor at 1009, and the rerun began there."""
    api = Observations(observations(25))
    server = loopback(api)
    pull(tmp_path / "whole", server.url, clock)
    api.fail[1009] = [Reply(500, b"<html>Internal Server Error</html>", {"Content-Type": "text/html"})] * 2
    root = tmp_path / "data"
    with pytest.raises(HttpError, match="gave up after 2 attempts") as err:
        pull(root, server.url, clock, max_retries=1)
    assert not list(dataset_dir(root, server.url).glob(f"*/{SUCCESS}"))  # nothing committed...
    pull(root, server.url, clock, max_retries=1)  # ...so the rerun starts where the failed one did
    assert observation_ids(root) == list(range(1000, 1025))
    assert raw_rows(root) == raw_rows(tmp_path / "whole")
    assert err.value.status == 500  # (the last answer's: the CLI words its advice by it)


@pytest.mark.timeout(120)
def test_sigkill_mid_pull_then_rerun_equals_an_uninterrupted_pull(loopback, tmp_path, clock):
    """QA: Ctrl-C or a kill after three pages lost observations 1000-1014 for good."""
    api = Observations(observations(25), delay_s=0.3)
    server = loopback(api)
    api.delay_s = 0.0
    pull(tmp_path / "whole", server.url, clock)
    api.delay_s = 0.3
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.sources.killable_pull", str(killed), server.url]
    asked = len(api.asked)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(api.asked) - asked < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert 3 <= len(api.asked) - asked < 6, "the kill should land mid-pull"
    assert not list(killed.glob(f"raw/**/{SUCCESS}"))
    api.delay_s = 0.0
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert api.asked[-6:] == [0, 1004, 1009, 1014, 1019, 1024]  # the rerun pulled from the start again
    assert raw_rows(killed) == raw_rows(tmp_path / "whole")
    assert observation_ids(killed) == list(range(1000, 1025))
