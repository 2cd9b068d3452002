# biocorpus front door: every target installs what it needs into .venv first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?=
RUNNER  ?= local
CONFIG  ?=
SOURCE  ?=
INPUT   ?=
DATASET ?=
SQL     ?= SELECT source, count(*) AS records FROM records GROUP BY 1 ORDER BY 2 DESC
PYTEST  ?= -q

CFG_FLAG   = $(if $(CONFIG),--config "$(CONFIG)",)
# without DATA= the data root is the config's `data` (default data/)
COMMON     = $(if $(DATA),--data "$(DATA)",) $(CFG_FLAG)
RUN_FLAGS  = $(COMMON) --runner $(RUNNER)
BIOCORPUS  = $(BIN)/biocorpus

.DEFAULT_GOAL := help
.PHONY: help install install-train demo test test-slow test-all lint ingest backbone resolve curate download \
        train query report run chromium bench-ingest bench-ingest-inat bench-ingest-eol bench-ifcb bench-resolve bench-curate bench-curate-dedup bench-download \
        bench-loader bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --compile -e '.[dev]'
	touch $@

$(VENV)/.installed-train: $(VENV)/.installed
	$(BIN)/python -m pip install -q --compile -e '.[dev,train]'
	touch $@

install: $(VENV)/.installed ## create .venv with the pipeline and test tools

install-train: $(VENV)/.installed-train ## add torch (CPU wheel, pinned) for the training stage

demo: $(VENV)/.installed-train ## run every stage on the bundled real samples into DATA (default data/)
	$(BIN)/python -m pipeline.demo --data "$(or $(DATA),data)" --runner $(RUNNER)

test: $(VENV)/.installed-train chromium ## the default test suite (offline, < 10 min)
	$(BIN)/python -m pytest $(PYTEST) -m "not slow"

test-slow: $(VENV)/.installed-train ## the slow tests only
	$(BIN)/python -m pytest $(PYTEST) -m "slow"

test-all: $(VENV)/.installed-train chromium ## every test
	$(BIN)/python -m pytest $(PYTEST)

chromium: ## install Debian's chromium for the report test (skipped if it cannot be installed)
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
	  || echo "chromium not installed: the report rendering test will be skipped"

lint: $(VENV)/.installed ## ruff over the code
	$(BIN)/ruff check pipeline schemas sources taxonomy shards tests bench

ingest: $(VENV)/.installed ## make ingest SOURCE=gbif [INPUT=path/or/url] [DATASET=name]
	@test -n "$(SOURCE)" || (echo "usage: make ingest SOURCE=<gbif|inaturalist|eol|ecotaxa|ifcb|ifcb_dashboard|folders> [INPUT=...]"; exit 2)
	$(BIOCORPUS) ingest $(SOURCE) $(if $(INPUT),--input "$(INPUT)",) $(if $(DATASET),--dataset "$(DATASET)",) $(RUN_FLAGS)

backbone: $(VENV)/.installed ## make backbone [KIND=gbif|coldp|inat|inat-dwca] [INPUT=archive] (gbif without INPUT: download)
	$(BIOCORPUS) backbone $(or $(KIND),gbif) $(if $(INPUT),--input "$(INPUT)",) $(if $(VERSION),--version $(VERSION),) $(COMMON)

resolve: $(VENV)/.installed ## resolve names against the backbone: raw/ -> resolved/
	$(BIOCORPUS) resolve $(RUN_FLAGS)

curate: $(VENV)/.installed ## filters, dedup, balance, splits, captions: resolved/ -> curated/
	$(BIOCORPUS) curate $(RUN_FLAGS)

download: $(VENV)/.installed ## fetch images into webdataset shards: curated/ -> shards/
	$(BIOCORPUS) download $(RUN_FLAGS)

train: $(VENV)/.installed-train ## train the hierarchical classifier on the shards (DEVICE=auto|cpu|cuda)
	$(BIOCORPUS) train $(COMMON) $(if $(DEVICE),--device $(DEVICE),)

query: $(VENV)/.installed ## make query SQL="SELECT family, count(*) FROM records GROUP BY 1"
	$(BIOCORPUS) query "$(SQL)" $(COMMON)

report: $(VENV)/.installed ## HTML report, dataset card and Croissant metadata: -> report/
	$(BIOCORPUS) report $(COMMON)

run: $(VENV)/.installed-train ## every stage in order (PLAN=plan.toml lists the inputs)
	$(BIOCORPUS) run $(RUN_FLAGS) $(if $(PLAN),--plan "$(PLAN)",)

bench-ingest: $(VENV)/.installed ## GBIF DwC-A ingest vs python-dwca-reader
	$(BIN)/python bench/ingest_gbif.py $(BENCH_ARGS)

bench-ingest-inat: $(VENV)/.installed ## iNaturalist dump adapter vs the former per-row loop
	$(BIN)/python bench/ingest_inat.py $(BENCH_ARGS)

bench-ingest-eol: $(VENV)/.installed ## EOL media manifest reader vs the former per-row loop
	$(BIN)/python bench/ingest_eol.py $(BENCH_ARGS)

bench-ifcb: $(VENV)/.installed ## IFCB ROI extraction vs a per-ROI Python loop
	$(BIN)/python bench/ifcb_rois.py $(BENCH_ARGS)

bench-resolve: $(VENV)/.installed ## 1M names against a 3M-row backbone vs a per-name loop
	$(BIN)/python bench/resolve.py $(BENCH_ARGS)

bench-curate: $(VENV)/.installed ## curate vs BioTrove's arbor-process on 5M rows
	$(BIN)/python bench/curate.py $(BENCH_ARGS)

bench-curate-dedup: $(VENV)/.installed ## curate's dedup by record and photo vs the former row-by-row code
	$(BIN)/python bench/curate_dedup.py $(BENCH_ARGS)

bench-download: $(VENV)/.installed ## downloader vs img2dataset on a loopback server
	$(BIN)/python bench/download.py $(BENCH_ARGS)

bench-loader: $(VENV)/.installed-train ## training loader vs a plain PIL loop
	$(BIN)/python bench/loader.py $(BENCH_ARGS)

bench: bench-ingest bench-ingest-inat bench-ingest-eol bench-ifcb bench-resolve bench-curate bench-curate-dedup bench-download bench-loader ## every benchmark

clean: ## remove the data root and caches (not .venv)
	rm -rf "$(or $(DATA),data)" .pytest_cache .ruff_cache .hypothesis
