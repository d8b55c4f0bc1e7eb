# deskgate — development and CI entry points. `make` (or `make help`) lists the targets.
#
# Services (PostgreSQL, Docker, anvil) come from scripts/services.sh, which writes
# .deskgate/services.env; cargo steps run with that file sourced.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

STATE_DIR := $(or $(DESKGATE_STATE_DIR),$(CURDIR)/.deskgate)
ENV_FILE := $(STATE_DIR)/services.env
WITH_ENV := . $(ENV_FILE) &&
# rustfmt colours its diff whatever CARGO_TERM_COLOR says; follow it.
FMT_CHECK := --check$(if $(filter never,$(CARGO_TERM_COLOR)), --color never)

# Find cargo in ~/.cargo/bin (or $CARGO_HOME/bin) when it is not on PATH.
CARGO_BIN_DIR := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin
ifeq ($(shell command -v cargo 2>/dev/null),)
  ifneq ($(wildcard $(CARGO_BIN_DIR)/cargo),)
    export PATH := $(CARGO_BIN_DIR):$(PATH)
  endif
endif

.PHONY: help services services-down web compose-images test run bench chaos fleet-test fmt clippy check-cargo check-rustfmt check-clippy

help:
	@echo 'deskgate make targets:'
	@echo '  services       start PostgreSQL, Docker (+ test image) and anvil; write .deskgate/services.env'
	@echo '  services-down  stop them (dockerd only if the scripts started it)'
	@echo '  web            build the web client (web/ -> web/dist, embedded by the gate)'
	@echo '  compose-images build the docker compose stack images on local Debian bases (~15 min cold)'
	@echo '  test           services and web, then cargo fmt --check, clippy -D warnings, the page tests,'
	@echo '                 20 s of each fuzz target, the compose images, cargo test (what CI runs)'
	@echo '  run            services, then the gate on http://127.0.0.1:8080 (DESKGATE_* in your env win)'
	@echo '  bench          services, then cargo bench --workspace'
	@echo '  chaos          services, then the fault campaign: the kept seeds, then 1,000 faults'
	@echo '                 on a new seed (FAULTS=N to change; DESKGATE_CHAOS_SEED to replay one)'
	@echo '  fleet-test     services, then tests/fleet_swarm.rs: compose/stack.yaml on a Docker Swarm of'
	@echo '                 local engines in network namespaces (root; builds the stack images first;'
	@echo '                 make test runs it too)'
	@echo '  fmt            cargo fmt --all'
	@echo '  clippy         cargo clippy --workspace --all-targets -- -D warnings'

check-cargo:
	@command -v cargo >/dev/null || { \
	  echo 'error: cargo not found (not on PATH, nor in $(CARGO_BIN_DIR)).' >&2; \
	  echo '       Install Rust with rustup (see https://rustup.rs), then re-run make.' >&2; \
	  exit 1; }

check-rustfmt: check-cargo
	@cargo fmt --version >/dev/null 2>&1 || { \
	  echo 'error: rustfmt is missing; run: rustup component add rustfmt' >&2; exit 1; }

check-clippy: check-cargo
	@cargo clippy --version >/dev/null 2>&1 || { \
	  echo 'error: clippy is missing; run: rustup component add clippy' >&2; exit 1; }

services:
	scripts/services.sh up

services-down:
	scripts/services.sh down

web:
	scripts/web.sh build

compose-images: services
	scripts/compose-stack.sh build

test: check-rustfmt check-clippy services web
	$(WITH_ENV) cargo fmt --all -- $(FMT_CHECK)
	$(WITH_ENV) cargo clippy --workspace --all-targets --locked -- -D warnings
	scripts/web.sh test
	scripts/fuzz.sh ci
	scripts/compose-stack.sh build
	$(WITH_ENV) cargo test --workspace --locked

run: check-cargo services web
	scripts/run-gate.sh $(ARGS)

bench: check-cargo services web
	$(WITH_ENV) cargo bench --workspace

chaos: check-cargo services web
	$(WITH_ENV) scripts/chaos.sh $(or $(FAULTS),1000)

fleet-test: check-cargo services
	scripts/compose-stack.sh build
	$(WITH_ENV) cargo test --locked --test fleet_swarm -- --nocapture

fmt: check-rustfmt
	cargo fmt --all

clippy: check-clippy
	cargo clippy --workspace --all-targets -- -D warnings
