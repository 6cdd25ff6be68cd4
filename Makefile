# The two commands: `make demo` (a sale on a local cluster) and `make test` (every test).
SHELL := /bin/bash
.DEFAULT_GOAL := help

E2E_DIR := .e2e
KUBECONFIG_LOCAL := $(E2E_DIR)/kubeconfig

.PHONY: help
help:
	@echo "make demo          run a flash sale end to end on a local cluster"
	@echo "make test          fmt, clippy, unit and end-to-end tests (builds the control plane once)"
	@echo "make toolchain     build and cache the control plane, kwok, helm, CronHPA controller, OpenFeature clients"
	@echo "make cluster-up    start a local cluster in the background ($(KUBECONFIG_LOCAL))"
	@echo "make cluster-down  stop it"
	@echo "make crds          regenerate crds/ and the chart's copy from the Rust types"
	@echo "make image         build the container image as an OCI archive (no container daemon needed)"

.PHONY: toolchain
toolchain:
	@bash tests/e2e/toolchain/build.sh >/dev/null
	@bash tests/e2e/toolchain/cronhpa/build.sh >/dev/null
	@bash tests/e2e/toolchain/statuscheck/build.sh >/dev/null
	@bash tests/e2e/toolchain/openfeature/build.sh >/dev/null
	@bash tests/e2e/toolchain/prometheus-operator/fetch.sh >/dev/null

IMAGE := target/image/flashsale-operator-$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1).oci.tar

.PHONY: image
image:
	@bash scripts/image.sh $(IMAGE) >/dev/null

.PHONY: test
test: toolchain
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	$(MAKE) --no-print-directory image
	bash tests/image/check.sh $(IMAGE)
	promtool check rules charts/flashsale-operator/alerts/flashsale-operator.rules.yaml
	cd tests/alerts && promtool test rules flashsale-operator.test.yaml
	cargo test --lib --bins --tests

.PHONY: crds
crds:
	cargo run --quiet -- crd > crds/flashsale.dev_flashsales.yaml
	cp crds/flashsale.dev_flashsales.yaml charts/flashsale-operator/crds/

.PHONY: cluster-up
cluster-up: toolchain
	@bash scripts/cluster.sh up $(E2E_DIR)

.PHONY: cluster-down
cluster-down:
	@bash scripts/cluster.sh down $(E2E_DIR)

.PHONY: demo
demo: toolchain
	@bash scripts/demo.sh $(E2E_DIR)
