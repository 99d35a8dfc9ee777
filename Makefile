# Two commands matter: `make run` and `make test` (see README.md). Both set up .venv/ on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
EXTRAS  := export,local,whisper-base,test,bench,lint
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
MODEL   ?= whisper-tiny.en
CONFIG  ?= deploy/local.yaml

.PHONY: setup system-packages run test models clean-engines

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*; touch $@

setup: $(STAMP) system-packages

# SIPp (Debian `sip-tester`) is the real SIP peer the tests and the demo use; Chromium renders
# the agent-assist page in the browser test; Kamailio (its dispatcher module is in the base
# package) runs deploy/kamailio/kamailio.cfg in front of several daemons in tests/test_scale_out.py.
# Kamailio lives in /usr/sbin, which a non-root PATH may lack: hence the explicit path. Its
# packaged service (on 0.0.0.0:5060, where `make run` listens) is switched off: tests run their own.
system-packages:
	@command -v sipp >/dev/null && command -v chromium >/dev/null && test -x /usr/sbin/kamailio || { \
		apt-get update -qq && apt-get install -y -qq sip-tester chromium kamailio && \
		{ systemctl disable --now kamailio 2>/dev/null || true; }; }

models: setup
	$(BIN)/asr-stream models prepare $(MODEL)

run: setup models
	$(BIN)/asr-stream run --config $(CONFIG)

# Lint first (seconds): ruff (rules and formatting) over the repository, mypy over asr_stream and bench/
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/asr-stream models prepare whisper-tiny.en
	$(BIN)/python -m pytest -q -ra

clean-engines:
	rm -rf engines/*/
