# `make demo` and `make test` do the whole set-up on a fresh machine:
# a .venv in the repo, the pinned packages, the compiled extension (C++ always, CUDA when a toolkit
# is found). A second run skips what is already done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
EXT_STAMP := build/.extension
# The CUDA toolkit root is the folder whose lib64 holds libcudart.so (torch guesses it wrongly
# from an nvcc on PATH).
CUDA_HOME ?= $(firstword $(foreach d,/usr/local/cuda $(wildcard /usr/local/cuda-*),$(if $(wildcard $(d)/lib64/libcudart.so),$(d))))
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export CUDA_HOME TORCH_CUDA_ARCH_LIST

.PHONY: demo test setup extension clean

setup: $(EXT_STAMP)

$(VENV_STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(EXT_STAMP): $(VENV_STAMP) setup.py $(wildcard csrc/*)
	MAX_JOBS=2 $(PY) setup.py -q build_ext --inplace
	mkdir -p build && touch $@

extension: $(EXT_STAMP)

test: $(EXT_STAMP)
	$(PY) -m pytest -q tests

# The demo: the default synthetic world (generated once, ~4 min on 2 cores) -> info files -> train
# effocc_fusion_r18_tiny for DEMO_MINUTES -> evaluate (mIoU table, RayIoU, saved predictions) ->
# pictures -> the video of DEMO_SCENE (the first validation scene) from the saved predictions.
DEMO_DATA ?= data/synthetic
DEMO_WORK ?= work_dirs/demo
DEMO_MINUTES ?= 10
DEMO_SCENE ?= scene-0103

demo: $(EXT_STAMP)
	$(PY) -c "from datasets.build import ensure_synthetic_world; ensure_synthetic_world('$(DEMO_DATA)')"
	rm -rf $(DEMO_WORK)
	$(PY) train_fusion.py --config effocc_fusion_r18_tiny --data-root $(DEMO_DATA) --work-dir $(DEMO_WORK) \
		--max-minutes $(DEMO_MINUTES) --no-val
	$(PY) evaluate.py --ckpt "$$(ls $(DEMO_WORK)/step_*.pt | tail -n 1)" --data-root $(DEMO_DATA) \
		--out $(DEMO_WORK)/metrics.json --vis-dir $(DEMO_WORK)/pictures --vis-samples 4 \
		--save-pred $(DEMO_WORK)/predictions
	$(PY) tools/render_video.py --pred-dir $(DEMO_WORK)/predictions --data-root $(DEMO_DATA) \
		--scene $(DEMO_SCENE) --out $(DEMO_WORK)/$(DEMO_SCENE).mp4
	@echo "pictures: $(DEMO_WORK)/pictures   TensorBoard: tensorboard --logdir $(DEMO_WORK)/tensorboard"
	@echo "video: $(DEMO_WORK)/$(DEMO_SCENE).mp4"

clean:
	rm -rf build occ/_C*.so
