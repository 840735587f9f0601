# od — thin Make layer over `python -m od.<step>`. Every target creates/refreshes .venv on first use.
# Variables: DATA= RECORDS= LABEL_MAP= CONFIG= MODEL_DIR= STEPS= NAME= OUT= TO= ARGS= (extra CLI flags)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.od-installed

DATA ?= annotations/demo
RECORDS ?= data/records
LABEL_MAP ?= label_maps/label_map.pbtxt
CONFIG ?= faster_rcnn_resnet18_fpn_cpu
MODEL_DIR ?= runs/$(CONFIG)
NAME ?= $(notdir $(MODEL_DIR))
EXPORT_DIR ?= exported/$(NAME)
STEPS ?=
OUT ?=
ARGS ?=
TO ?=
TFLITE ?=

steps_flag = $(if $(STEPS),--steps $(STEPS),)
time_flag = $(if $(TIME),--time $(TIME),)
out_flag = $(if $(OUT),--out $(OUT),)

.PHONY: help venv demo demo-classify demo-data records convert inspect train eval export detect classify test test-slow test-all bench

help:
	@echo "make demo      demo data -> records -> train (CPU template) -> export -> detect"
	@echo "make demo-classify  the same for image classification (folder per class -> classify)"
	@echo "make records   DATA=annotations/<set> -> $(RECORDS) + $(LABEL_MAP) + report.json"
	@echo "make convert   DATA=<set> TO=voc|coco|yolo|csv OUT=<dir> [ARGS='--images hardlink'] -> the set in another format"
	@echo "make inspect   check records, per-class counts, gallery"
	@echo "make train     CONFIG=<template> [STEPS=N | TIME=15m] -> $(MODEL_DIR)"
	@echo "make eval      metrics.json + plots in $(MODEL_DIR)/eval"
	@echo "make export    $(MODEL_DIR) -> $(EXPORT_DIR)"
	@echo "make detect    IMAGES=... -> detections/"
	@echo "make classify  IMAGES=... [ARGS='--save-csv --sort-into sorted/'] -> top-5 per image (classifications/)"
	@echo "make test      the default test suite (make test-all adds the slow end-to-end tests)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "od: installing the pinned stack into $(VENV) (first run takes a few minutes; log: $(VENV)/install.log)"
	@$(PY) -m pip install -q --upgrade pip > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@$(PY) -m pip install -q -e '.[dev]' >> $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $@

demo-data: $(STAMP)
	@if [ "$(DATA)" = "annotations/demo" ] && [ ! -d annotations/demo ]; then \
		echo "od: no $(DATA) yet, generating the demo dataset"; \
		$(PY) -m od.demo --out annotations/demo; \
	fi

records: demo-data
	$(PY) -m od.records $(DATA) --out $(RECORDS) --label-map $(LABEL_MAP) $(ARGS)

convert: demo-data
	@test -n "$(TO)" -a -n "$(OUT)" || { echo "od: make convert needs TO=voc|coco|yolo|csv and OUT=DIR"; exit 2; }
	$(PY) -m od.convert $(DATA) --to $(TO) --out $(OUT) $(ARGS)

inspect: $(STAMP)
	@# gallery.png in $(RECORDS) is this target's own picture of the records: redrawn on every run
	$(PY) -m od.inspect $(RECORDS)/*.tfrecord --label-map $(LABEL_MAP) --gallery 16 --out $(RECORDS) --force $(ARGS)

train: $(STAMP)
	$(PY) -m od.train --config $(CONFIG) --records $(RECORDS) --label-map $(LABEL_MAP) --model-dir $(MODEL_DIR) $(steps_flag) $(time_flag) $(ARGS)

eval: $(STAMP)
	$(PY) -m od.evaluate --model-dir $(MODEL_DIR) --records $(RECORDS) $(ARGS)

export: $(STAMP)
	$(PY) -m od.export --model-dir $(MODEL_DIR) --out $(EXPORT_DIR) $(if $(TFLITE),--tflite $(TFLITE),) $(ARGS)

IMAGES ?= $(DATA)
detect: $(STAMP)
	$(PY) -m od.detect $(IMAGES) --model $(EXPORT_DIR) $(out_flag) $(ARGS)

classify: $(STAMP)
	$(PY) -m od.classify $(IMAGES) --model $(EXPORT_DIR) $(out_flag) $(ARGS)

# The main job on the built-in demo data: records -> train (CPU template) -> eval -> export -> detect on
# held-out demo images (generated with another seed, never seen in training) -> detections/.
DEMO_MODEL_DIR := runs/demo
DEMO_EXPORT := exported/demo
DEMO_HELDOUT := data/demo_heldout
demo: records
	$(PY) -m od.train --config faster_rcnn_resnet18_fpn_cpu --records $(RECORDS) --label-map $(LABEL_MAP) --model-dir $(DEMO_MODEL_DIR) $(steps_flag)
	@# the demo re-evaluates and re-exports its own model on every run (runs/demo and exported/demo are the demo's)
	$(PY) -m od.evaluate --model-dir $(DEMO_MODEL_DIR) --records $(RECORDS) --force
	$(PY) -m od.export --model-dir $(DEMO_MODEL_DIR) --out $(DEMO_EXPORT) --force
	@test -d $(DEMO_HELDOUT) || $(PY) -m od.demo --out $(DEMO_HELDOUT) --num-images 8 --seed 2026
	$(PY) -m od.detect $(DEMO_HELDOUT) --model $(DEMO_EXPORT) --out detections --save-json
	@echo "od: demo done - annotated images in detections/, metrics in $(DEMO_MODEL_DIR)/eval/metrics.json"

# The classification half on built-in data: a folder per class -> records -> train (CPU template, from
# scratch) -> eval -> export -> classify held-out images (another seed) -> classifications/ (+ sorted/).
CDEMO_DATA := annotations/demo-classify
CDEMO_RECORDS := data/records-classify
CDEMO_MODEL_DIR := runs/demo-classify
CDEMO_EXPORT := exported/demo-classify
CDEMO_HELDOUT := data/demo-classify_heldout
demo-classify: $(STAMP)
	@test -d $(CDEMO_DATA) || $(PY) -m od.demo --task classify --out $(CDEMO_DATA)
	$(PY) -m od.records $(CDEMO_DATA) --out $(CDEMO_RECORDS) --label-map $(CDEMO_RECORDS)/label_map.pbtxt
	$(PY) -m od.train --config classifier_resnet18_cpu --records $(CDEMO_RECORDS) --model-dir $(CDEMO_MODEL_DIR) $(steps_flag)
	$(PY) -m od.evaluate --model-dir $(CDEMO_MODEL_DIR) --records $(CDEMO_RECORDS) --force
	$(PY) -m od.export --model-dir $(CDEMO_MODEL_DIR) --out $(CDEMO_EXPORT) --force
	@test -d $(CDEMO_HELDOUT) || $(PY) -m od.demo --task classify --out $(CDEMO_HELDOUT) --num-images 12 --seed 2026
	$(PY) -m od.classify $(CDEMO_HELDOUT) --model $(CDEMO_EXPORT) --out classifications --save-json --force \
		--sort-into classifications/sorted
	@echo "od: demo-classify done - top-5 per image above, classifications/ (sorted/ per class), metrics in $(CDEMO_MODEL_DIR)/eval/metrics.json"

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=25

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) benchmarks/records_bench.py
	$(PY) benchmarks/train_bench.py
	$(PY) benchmarks/detect_bench.py
	$(PY) benchmarks/classify_bench.py
