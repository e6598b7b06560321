# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements/*.txt | sha1sum | cut -c1-12)

.PHONY: setup dataset photos photo-zoo postgres prometheus proto lint demo test test-fast mutate bench-rd bench-rd-photos bench-rd-rounding bench-ingest bench-variants bench-deep-pca bench-hostile bench-serving bench-speed bench-coder-overhead bench-uses bench-map2d bench-features bench-denoise bench-anomaly bench-hashing bench-search-latency clean

$(STAMP): requirements/*.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) dataset

# Fashion-MNIST from Debian's dataset-fashion-mnist; falls back to digits where it cannot be installed.
dataset:
	@bash tools/ensure_dataset.sh

# Freely licensed photographs (Debian wallpaper packages + scikit-image samples) -> data/photos/{train,heldout}/
# (tools/photos.tsv lists them with their licences and hashes; docs/photo_training.md).
photos: $(STAMP)
	@bash tools/ensure_photos.sh

# The PostgreSQL server the storage tests run against (127.0.0.1:5432, database test).
postgres:
	@bash tools/ensure_postgres.sh

# Prometheus and promtool (Debian package) for the monitoring tests.
prometheus:
	@bash tools/ensure_prometheus.sh

# Regenerate the gRPC stubs from proto/ (tests/test_proto_stubs.py fails when they are stale).
proto: $(STAMP)
	$(PY) tools/gen_proto.py

# Lint, format and types: what .ci/run runs before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: setup
	$(PY) -m tools.demo

test: setup postgres prometheus
	$(PY) -m pytest

# Everything but the tests that train models for a while (under a minute on 2 cores).
test-fast: setup
	$(PY) -m pytest -m "not slow"

# One-line faults in a copy of the tree, each followed by the tests that should catch it -> docs/mutation.md.
mutate: setup
	$(PY) -m tools.mutate

# Ingest throughput per store and batch size, and the edge spool's cost -> docs/bench-ingest.md.
# Trains a small dense Fashion-MNIST bundle (32 bytes per item) the first time.
BENCH_INGEST := runs/bench-ingest
bench-ingest: setup postgres
	@test -f $(BENCH_INGEST)/bundle/manifest.json || { \
	  $(PY) -m training.train --model dense --arg code_dim=32 --arg "hidden=[128]" --data fashion-mnist \
	    --epochs 2 --limit 4000 --out $(BENCH_INGEST)/dense.pt --no-progress && \
	  $(PY) -m training.export --checkpoint $(BENCH_INGEST)/dense.pt --out $(BENCH_INGEST)/bundle --quant affine8 \
	    --fit-items 2000 --test-limit 500; }
	$(PY) -m bench.ingest --bundle $(BENCH_INGEST)/bundle --data fashion-mnist --out docs/bench-ingest.md

# Malformed requests, garbage, amplification and 128 concurrent clients against one server -> docs/hostile.md (~5 min).
bench-hostile: setup
	$(PY) -m bench.hostile --out docs/hostile.md

# Served throughput and latency (batch sizes x clients, batching on and off, one and two processes, pipelined
# streams) vs the in-process ceiling and a bare gRPC server's floor -> docs/serving.md (~7.5 min).
bench-serving: setup
	$(PY) -m bench.serving --out docs/serving.md

# Map-codec speed and memory beside the old code path: 28x28 batches, photos per MP, a 12 MP photo end to end
# (edge CLI + server process, peak RSS each side), zoo bundles served -> docs/speed.md (~10 min on a busy machine).
bench-speed: setup
	$(PY) -m bench.speed --out docs/speed.md

# Where a small payload's bytes go: the entropy coder's termination against the ideal code length, per zoo bundle
bench-coder-overhead: setup
	$(PY) -m bench.coder_overhead --out docs/coder_overhead.md

# Every autoencoder variant beside its plain twin, each idea's claimed benefit measured, on Fashion-MNIST
# -> docs/variants.{md,png,json} (the cost of the last run is in variants.md).
bench-variants: setup
	$(PY) -m bench.variants

# Hinton & Salakhutdinov's comparison: deep 784-1000-500-250-30 (stacked + fine-tuned) vs PCA-30 vs a linear
# 30-unit autoencoder on all of Fashion-MNIST -> docs/deep_pca.{md,png,json} (the cost is in deep_pca.md).
bench-deep-pca: setup
	$(PY) -m bench.deep_pca

# What the codes are for (issue 23): each target trains its small bundles into runs/uses (cached by recipe, shared)
# and writes its table and pictures to docs/. bench-uses runs them all; the cost of each run is in its .md.
bench-map2d: setup      # 2-value code vs PCA's 2-D map, trustworthiness, kNN accuracy -> docs/map2d.{md,png}
	$(PY) -m bench.map2d
bench-features: setup   # linear classifiers on stored codes vs pixels and PCA -> docs/features.md
	$(PY) -m bench.features
bench-denoise: setup    # a denoising bundle served through Decode vs median / non-local means -> docs/denoise.{md,png}
	$(PY) -m bench.denoise
bench-anomaly: setup    # reconstruction error on held-out classes, ROC AUC -> docs/anomaly.md
	$(PY) -m bench.anomaly
bench-hashing: setup    # semantic hashing precision@10 vs random, LSH and PCA-sign codes -> docs/hashing.md
	$(PY) -m bench.hashing
bench-search-latency: setup postgres   # Search over 100k stored items, SQLite and PostgreSQL -> docs/search_latency.md
	$(PY) -m bench.search_latency
bench-uses: bench-map2d bench-features bench-denoise bench-anomaly bench-hashing bench-search-latency

# Rate-distortion: the committed model zoo (zoo/) vs PCA/PNG/zstd/JPEG/WebP/AVIF on the full Fashion-MNIST test
# split -> docs/rd.{md,png,json} and zoo/README.md. RETRAIN=1 first retrains the whole ladder into zoo/ (every
# preset of bench/train_ladder.py; it prints how long it took, and each ladder's time is in docs/rd_ladder_*.json).
# Your own data: DATA=<IDX folder | .npz with x_train/x_test | image folder with train/ and test/ | digits:N>
# RETRAIN=1 OUT=<folder> trains the map ladder on DATA's training split into OUT/bundles and writes the same report
# for DATA's test split to OUT (bench/recipe.py; OUT defaults to runs/recipe). LADDER_FLAGS go to bench.train_ladder
# (e.g. "--first-steps 2000 --steps 500 --threads 1" for a quicker, rougher ladder).
DATA ?=
OUT ?= runs/recipe
LADDER_FLAGS ?=
bench-rd: $(STAMP) $(if $(DATA),,dataset)
ifeq ($(DATA),)
	@if [ "$(RETRAIN)" = 1 ]; then $(PY) -m bench.train_ladder --out zoo; fi
	$(PY) -m bench.rd --bundles zoo --out-dir docs --zoo-index zoo/README.md
else
	$(PY) -m bench.recipe --data $(DATA) --out $(OUT) $(if $(filter 1,$(RETRAIN)),--retrain $(LADDER_FLAGS),)
endif

# The photo ladder (docs/photo_training.md): 64x64 crops of data/photos/train, five rungs trained in two stages.
# Stage 1 (preset photo) trains the first rung from scratch and the others from the nearest lambda's, and exports
# them to runs/photo/bundles (docs/rd_ladder_photo.json); stage 2 (preset photo-long) continues each rung from its
# own stage-1 checkpoint and exports into zoo/photo (docs/rd_ladder_photo_long.json); stage 3 (preset
# photo-checkerboard) trains a checkerboard context on each stage-2 rung and exports it beside it into zoo/photo
# (photo-checkerboard-lambda-L, docs/rd_ladder_photo_checkerboard.json). The deeper ladder (code maps at 1/8 of the
# side): preset photo-deep trains its first rung from scratch and the others from the nearest lambda's, preset
# photo-deep-checkerboard a checkerboard context on each (photo-deep-lambda-L, photo-deep-checkerboard-lambda-L in
# zoo/photo). Every rung's training time is in those files. Resumable: after an interruption the same command
# continues each rung from its last state in runs/<preset>. To export without retraining, copy the committed
# checkpoints first: for d in photo photo-long photo-checkerboard photo-deep photo-deep-checkerboard; do
#   mkdir -p runs/$d && cp checkpoints/$d/*.pt runs/$d/; done
PHOTO_CROPS := data/crops/photo-64.npz
photo-zoo: setup photos
	@test -f $(PHOTO_CROPS) || $(PY) -m training.crops --photos data/photos/train --exclude data/photos/heldout \
	  --out $(PHOTO_CROPS) --size 64 --count 20000 --test-count 1000 --max-side 512,768,1024 --seed 0
	$(PY) -m bench.train_ladder --preset photo --resume --out runs/photo/bundles --summary docs/rd_ladder_photo.json
	$(PY) -m bench.train_ladder --preset photo-long --resume --out zoo/photo --summary docs/rd_ladder_photo_long.json
	$(PY) -m bench.train_ladder --preset photo-checkerboard --resume --out zoo/photo --summary docs/rd_ladder_photo_checkerboard.json
	$(PY) -m bench.train_ladder --preset photo-deep --resume --out zoo/photo --summary docs/rd_ladder_photo_deep.json
	$(PY) -m bench.train_ladder --preset photo-deep-checkerboard --resume --out zoo/photo --summary docs/rd_ladder_photo_deep_checkerboard.json

# Whole held-out photographs (PHOTOS, default data/photos/heldout): the colour bundles under zoo/ (PHOTO_ZOO) vs JPEG
# 4:2:0/4:4:4, WebP, AVIF in bits per pixel, PSNR RGB/luma, MS-SSIM -> docs/photo_rd.{md,json,png}, photo_rd_crops.png.
PHOTOS ?= data/photos/heldout
PHOTO_ZOO ?= zoo/photo
bench-rd-photos: setup photos
	$(PY) -m bench.rd --photos $(PHOTOS) --max-side 768 --bundles $(PHOTO_ZOO) --out-dir docs

# Rate-aware rounding's strength: chosen on training photographs, reported on the held-out ones
bench-rd-rounding: setup photos
	$(PY) -m bench.rd_rounding --photos data/photos/train --limit 10 --kappa 0,0.02,0.04,0.06,0.09 --out docs/rd_rounding_train.md
	$(PY) -m bench.rd_rounding --photos $(PHOTOS) --kappa 0,0.02,0.04,0.06,0.09 --out docs/rd_rounding.md

clean:
	rm -rf runs bundles .pytest_cache
