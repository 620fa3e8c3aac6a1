# lethe — see README.md. Every target works on a fresh machine with Go; tools the tests need are
# built from pinned module versions into $(HOME)/.cache/lethe.

GO        ?= go
BIN       := bin
DEMO_DIR  := ./data/demo
DEMO_CONF := type: FILESYSTEM\nconfig: {directory: $(DEMO_DIR)}
BENCHTIME ?= 1s
DASHBOARD_RUNS ?= 20
REWRITE_RUNS ?= 3

.PHONY: all build test demo bench lint clean

all: build

build:
	$(GO) build -o $(BIN)/lethe ./cmd/lethe
	$(GO) build -o $(BIN)/lethe-proxy ./cmd/lethe-proxy
	$(GO) build -o $(BIN)/lethe-rewriter ./cmd/lethe-rewriter
	$(GO) build -o $(BIN)/lethe-demo ./cmd/lethe-demo

# The end-to-end tests run real Prometheus, promtool and Thanos binaries, built once from the
# module proxy (tools/) and cached under ~/.cache/lethe; the deletions page is driven in Debian's
# headless chromium, installed once by tools/chromium.sh.
# CGO_ENABLED=0 as the Dockerfile builds: the tests, the e2e binaries and the deploy test's static
# builds then share one build cache.
test:
	CGO_ENABLED=0 $(GO) vet -stdmethods=false ./...
	CGO_ENABLED=0 LETHE_PROMETHEUS=$$(tools/build.sh prometheus) LETHE_PROMTOOL=$$(tools/build.sh promtool) \
		LETHE_THANOS=$$(tools/build.sh thanos) LETHE_CHROMIUM=$$(tools/chromium.sh) $(GO) test -count=1 -timeout 20m ./...

# The newcomer's demo: a local bucket of real TSDB blocks, a tombstone registered on the series
# that leaked a secret token, and the proxy serving the bucket on :9095 with it masked, its
# deletions page at / signed in with the demo's admin token.
DEMO_TOKEN := demo-admin-token-change-me
demo: build
	rm -rf $(DEMO_DIR) ./data/proxy
	$(BIN)/lethe-demo --dir $(DEMO_DIR)
	printf '$(DEMO_CONF)\n' > ./data/demo-bucket.yml
	printf '$(DEMO_TOKEN)' > ./data/admin-token
	$(BIN)/lethe tombstone add --objstore.config-file=./data/demo-bucket.yml \
		--match '{token="s3cr3t-demo-token"}' --redact --undelete-window 1h \
		--reason "demo: a token leaked into a label" --author demo
	$(BIN)/lethe tombstone list --objstore.config-file=./data/demo-bucket.yml
	@echo
	@echo "Point Grafana's Prometheus data source at http://localhost:9095, or try:"
	@echo "  curl -s 'http://localhost:9095/api/v1/label/token/values'          # the leaked token is gone"
	@echo "  curl -sG http://localhost:9095/api/v1/query --data-urlencode 'query=count(last_over_time(http_requests_total[1d]))'"
	@echo "  bin/lethe tombstone add --objstore.config-file=./data/demo-bucket.yml --match '{user_id=\"7\"}'"
	@echo "                                                                     # masked within 10s"
	@echo "  bin/lethe-rewriter plan --objstore.config-file=./data/demo-bucket.yml       # what a run would rewrite"
	@echo "  bin/lethe-rewriter run --objstore.config-file=./data/demo-bucket.yml --threshold 0"
	@echo "                 # removes it from the blocks for good, once its undelete window has passed"
	@echo "                 # (24h by default; tombstone add --undelete-window 0s makes it due at once)"
	@echo
	@echo "Deletions page (list, add with preview, cancel): http://localhost:9095/"
	@echo "  sign in with the demo's admin token: $(DEMO_TOKEN)"
	@echo
	$(BIN)/lethe-proxy --objstore.config-file=./data/demo-bucket.yml --data-dir ./data/proxy \
		--web.listen-address :9095 --web.admin-token-file ./data/admin-token

# Go benchmarks of the matcher index; the dashboard side by side (lethe-proxy against the upstream
# Prometheus asked directly and against Prometheus after its own delete_series); label look-ups
# through lethe against Prometheus' index; Thanos Query asked directly beside lethe-proxy reading
# through its StoreAPI and its query API; the rewriter
# against thanos tools bucket rewrite and a plain copy of the block: tables of ratios.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./tombstones/ ./block/ ./rewriter/ ./proxy/storeapi/
	LETHE_PROMETHEUS=$$(tools/build.sh prometheus) $(GO) test -run '^$$' -bench Dashboard -benchtime $(DASHBOARD_RUNS)x -timeout 20m ./e2e/ | tee bench.out | $(GO) run ./tools/benchtable
	LETHE_PROMETHEUS=$$(tools/build.sh prometheus) LETHE_THANOS=$$(tools/build.sh thanos) $(GO) test -run '^$$' -bench Lookups -benchtime 10x -timeout 60m ./e2e/ | tee bench-lookup.out | $(GO) run ./tools/benchtable
	LETHE_THANOS=$$(tools/build.sh thanos) $(GO) test -run '^$$' -bench 'StoreSource|StoreAPIFilter' -benchtime 8x -timeout 30m ./e2e/ | tee bench-store.out | $(GO) run ./tools/benchtable
	LETHE_THANOS=$$(tools/build.sh thanos) $(GO) test -run '^$$' -bench Rewrite -benchtime $(REWRITE_RUNS)x -timeout 20m ./e2e/ | tee bench-rewrite.out | $(GO) run ./tools/benchtable

lint:
	$(GO) vet -stdmethods=false ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf $(BIN) ./data
