# Soundline: one command per job. Each does its own set-up (scripts/setup.sh) on a fresh machine.
#
#   make run     Kafka (unless SOUNDLINE_KAFKA_BROKERS names one) + the web app; prints the URL
#   make test    fmt, clippy (host + wasm32), every test against a real Kafka, trunk build --release
#   make bench   the relay against Kafka's own producer and the old uploader, equal work side by side (BENCH_FULL=1: long),
#                then the resampler against rubato and as WebAssembly in Chromium
#   make setup   only the installs (Rust target, trunk, wasm-bindgen-cli, Chromium, Kafka jars)
#   make kafka-start / kafka-stop   the local development broker on :9092

SHELL := bash
.DEFAULT_GOAL := help

.PHONY: help setup run test bench kafka-start kafka-stop

help:
	@sed -n 's/^#   //p' Makefile

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/run.sh

test: setup
	@bash scripts/test.sh

bench: setup
	@bash scripts/setup.sh bench
	@bash scripts/bench.sh
	@bash scripts/bench-resampler.sh

kafka-start:
	@bash scripts/kafka.sh start

kafka-stop:
	@bash scripts/kafka.sh stop
