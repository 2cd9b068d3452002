"""Config: TOML → one frozen config; wrong keys, wrong types and secrets fail at once, naming the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.config import ConfigError, default_config_toml, load_config


def _write(tmp_path, text: str):
    p = tmp_path / "biocorpus.toml"
    p.write_text(text)
    return p


def test_defaults_load_and_are_frozen():
    cfg = load_config()
    assert cfg.data == "data" and cfg.runner.name == "local"
    with pytest.raises(ValidationError):
        cfg.data = "elsewhere"


def test_file_values_and_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, 'data = "corpus"\n[runner]\nworkers = 3\n'), {"runner.name": "beam"})
    assert (cfg.data, cfg.runner.workers, cfg.runner.name) == ("corpus", 3, "beam")


@pytest.mark.parametrize(
    "text, key",
    [
        ('dta = "x"\n', "dta"),
        ("[runner]\nworkerz = 2\n", "runner.workerz"),
        ('[runner]\nworkers = "many"\n', "runner.workers"),
        ('[runner]\nname = "spark"\n', "runner.name"),
        ("[nosuchstage]\nx = 1\n", "nosuchstage"),
    ],
    ids=["top-level-typo", "nested-typo", "wrong-type", "bad-choice", "unknown-table"],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert f"`{key}`" in str(err.value)


def test_secrets_in_the_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="environment"):
        load_config(_write(tmp_path, '[sources]\ngbif_password = "hunter2"\n'))


def test_missing_file_and_bad_toml_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "data = \n"))


def test_default_toml_round_trips(tmp_path):
    text = default_config_toml()
    assert "[runner]" in text
    cfg = load_config(_write(tmp_path, "\n".join(line for line in text.splitlines() if not line.startswith("#"))))
    assert cfg == load_config()


def test_default_toml_says_what_each_key_is_for():
    lines = default_config_toml().splitlines()
    at = lines.index("chunk_size = 10000")
    assert lines[at - 1] == "# rows per shuffled chunk file"
    assert lines[lines.index("[curate.splits]") - 1].startswith("# split name -> fraction")
    assert all(len(line) <= 100 for line in lines if line.startswith("# ") and " = " not in line)  # wrapped


@pytest.mark.parametrize("families", [["cc-by-4.0"], ["cc-by", "CC BY"], ["cc-zero"], ["cc-by-sa-3.0-igo"]])
def test_licences_must_be_families_without_a_version(tmp_path, families):
    with pytest.raises(ConfigError, match=r"config `\[curate\]`: licenses: .* are not licence families"):
        load_config(_write(tmp_path, f"[curate]\nlicenses = {families!r}\n".replace("'", '"')))


@pytest.mark.parametrize("families", [["cc0", "public-domain", "cc-by", "cc-by-sa"], ["CC-BY-NC-ND"], []])
def test_licence_families_load(tmp_path, families):
    assert load_config(_write(tmp_path, f"[curate]\nlicenses = {families!r}\n".replace("'", '"'))).curate.licenses \
        == tuple(families)
