# kgclip: `make run` runs the main job on embedded defaults, `make test` the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-kg bench-curate-images bench-crawl browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The web search engines drive a headless Chromium. Playwright's own download
# needs the internet; Debian's package is used instead, installed here when
# missing and apt-get is at hand (as root), else named for the user to install.
browser: $(STAMP)
	@$(BIN)/python -c "from crawl.browser import find_browser; find_browser()" 2>/dev/null \
	  || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	       && apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null; } \
	  || echo "no Chromium found: install Debian's chromium-headless-shell (web search engines need it)"

run: $(STAMP) browser
	$(BIN)/kgclip run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint browser
	$(BIN)/pytest

bench: bench-kg bench-curate-images bench-curate-dedup bench-crawl bench-train

bench-kg: $(STAMP)
	$(BIN)/python benchmarks/bench_kg.py

bench-curate-images: $(STAMP)
	$(BIN)/python benchmarks/bench_curate_images.py

bench-curate-dedup: $(STAMP)
	$(BIN)/python benchmarks/bench_curate_dedup.py

# img2dataset, the reference, is a benchmark-only dependency; without it the
# benchmark says so and measures kgclip alone. Chromium is for the result pages.
bench-crawl: $(STAMP) browser
	$(BIN)/python benchmarks/bench_crawl.py

bench-train: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf runs multirun outputs .pytest_cache .mypy_cache .ruff_cache
