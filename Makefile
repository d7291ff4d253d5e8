# The two quickstart commands: `make demo` (the main job: the embedded self-improvement demo) and
# `make test` (the whole suite). `make bench` runs the kernel and sampler benchmarks.
# Both install what they need first; extension build failures are fatal (TTRL_FAST_BUILD_EXT=1).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch 2.14.1 is a CUDA 13.0 build (it lies on this project's machines' disk) that matches nvcc 13.0,
# so the CUDA extension compiles and links even without a GPU; its tests then run the CPU paths.
TORCH_SPEC ?= torch==2.14.1
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: install test demo bench validate-gpu info clean

build/.installed: $(SOURCES)
	$(PIP) install -q "$(TORCH_SPEC)" "setuptools>=64" wheel
	$(PIP) install -q ninja pytest pytest-xdist expecttest hypothesis pytest-benchmark
	# parity targets of the tests (TRL's own loss code, Liger's kernels under the Triton interpreter)
	$(PIP) install -q trl==1.16.0 liger-kernel==0.8.5
	# the GRPO loop: LoRA adapters (reference policy = adapter off), checkpoints, progress bars, the demo's plot
	$(PIP) install -q peft==0.21.2 safetensors tqdm matplotlib
	mkdir -p build
	@echo "building ttrl_fast extensions (log: build/build.log; the CUDA one takes a few minutes)"
	TTRL_FAST_BUILD_EXT=1 $(PIP) install -v --no-build-isolation -e . > build/build.log 2>&1 \
		|| { tail -n 80 build/build.log; echo "ttrl_fast: extension build failed (full log: build/build.log)"; exit 1; }
	@echo "ptxas register/spill report:"; grep -E "ptxas info *: (Compiling entry|Used [0-9]+ registers)|spill" build/build.log || true
	touch $@

install: build/.installed

test: install
	TTRL_FAST_REQUIRE_EXT=1 $(PYTHON) -m pytest -q -n 2

demo: install
	$(PYTHON) -m ttrl_fast.cli demo --out ttrl_fast_demo

bench: install
	$(PYTHON) -m ttrl_fast.cli bench --full --out bench/results

# on a CUDA machine: every backend against the reference, determinism, every benchmark, one report
validate-gpu: install
	$(PYTHON) -m ttrl_fast.validate_gpu --out ttrl_fast_validate

info: install
	$(PYTHON) -m ttrl_fast.info

clean:
	rm -rf build ttrl_fast/*.so ttrl_fast/_build_info.json
