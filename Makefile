# bench: the benchmark harness (bench/README.md); needs root; installs the
#   tools it lacks (nginx, haproxy, iperf3, wrk, ...) from Debian.
#   make bench                                  3 rounds x 10 s, every config and workload
#   make bench BENCHFLAGS=-quick                smoke run
#   make bench BENCHFLAGS="-json out.json -markdown out.md"
# lab: the narrated walkthrough of both deployments (internal/lab); needs root.
.PHONY: bench lab

bench:
	go run ./bench -install $(BENCHFLAGS)

lab:
	go run ./cmd/detour lab $(LABFLAGS)
