// Command lethe-proxy serves the Prometheus HTTP API with tombstoned samples masked, in front of a
// Prometheus-compatible server or over the bucket's blocks.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/efficientgo/core/errors"
	kitlog "github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v2"

	"github.com/lethe-project/lethe/internal/bucketcfg"
	"github.com/lethe-project/lethe/internal/cliflags"
	"github.com/lethe-project/lethe/proxy"
	"github.com/lethe-project/lethe/proxy/storeapi"
	"github.com/lethe-project/lethe/tombstones"
)

func main() {
	app := &cli.App{
		Name:  "lethe-proxy",
		Usage: "the Prometheus HTTP API with tombstoned samples masked; point Grafana here",
		Description: "Without --upstream.url, lethe-proxy serves the bucket's raw blocks itself, copied to --data-dir.\n" +
			"No sample a live tombstone covers ever leaves it. If tombstones cannot be refreshed from the bucket\n" +
			"for longer than --tombstones.max-staleness, queries fail with 503 rather than serve deleted data.",
		Flags: append(bucketcfg.Flags(),
			&cli.StringFlag{Name: "web.listen-address", Value: ":9095", Usage: "Address to serve the API, /metrics, /-/healthy and /-/ready on."},
			&cli.StringSliceFlag{Name: "store.endpoint", Usage: "A Thanos StoreAPI server (HOST:PORT: store gateway, sidecar, receiver, querier) to serve the StoreAPI in front of, with tombstoned samples removed; repeatable. Point Thanos Query's --endpoint at --grpc-address instead of at these."},
			&cli.StringFlag{Name: "grpc-address", Value: ":10901", Usage: "Where to serve Thanos' gRPC StoreAPI when --store.endpoint is given."},
			&cli.StringFlag{Name: "upstream.url", Usage: "Prometheus-compatible server to answer in front of (Prometheus, Thanos Query, Mimir, VictoriaMetrics), e.g. http://prometheus:9090 or http://mimir/prometheus. Without it, the bucket's blocks are served."},
			&cli.StringSliceFlag{Name: "upstream.store", Usage: "Thanos StoreAPI (HOST:PORT, plain gRPC; repeatable) to read raw series from: Thanos Query's own gRPC address, or store gateways, sidecars and receivers directly. Native histograms included, streamed. With --upstream.url (the same querier's HTTP API) beside it, requests no tombstone can touch are answered by that API untouched, and its rules, alerts, exemplars and metadata are served filtered."},
			&cli.StringSliceFlag{Name: "upstream.replica-label", Usage: "Label that tells replicas apart (repeatable), as Thanos Query's --query.replica-label: replicas read through --upstream.store (or --store.endpoint) are deduplicated as Thanos does. With --upstream.url alone (Thanos Query deduplicates), a query or look-up that a tombstone naming one of them may meet fails: the deduplicated answer cannot lose one replica's samples."},
			&cli.StringFlag{Name: "upstream.read", Value: proxy.ReadAuto, Usage: "How to read raw series from the upstream: auto (remote read where offered, else the query API), remote-read or query-api."},
			&cli.StringFlag{Name: "upstream.external-labels", Usage: "The upstream's external labels as name=value,... ('' for none). By default they are read from the upstream's /api/v1/status/config."},
			&cli.StringFlag{Name: "upstream.http-config-file", Usage: "Prometheus HTTP client configuration (tls_config, basic_auth, authorization, oauth2, ...) for requests to the upstream."},
			&cli.StringSliceFlag{Name: "upstream.header", Usage: "Header sent with every upstream request, as 'Name: value' (repeatable), e.g. 'X-Scope-OrgID: tenant-1' for Mimir."},
			&cli.DurationFlag{Name: "upstream.timeout", Value: 2 * time.Minute, Usage: "Deadline of every upstream request: remote read, query API, the fast path, rules, alerts, metadata and the look-ups at start."},
			&cli.Int64Flag{Name: "upstream.max-response-size", Value: proxy.DefaultMaxResponseBytes, Usage: "Largest upstream answer body read, in bytes; a larger answer fails the request with an error that says so."},
			&cli.Uint64Flag{Name: "upstream.remote-read-frame-limit", Value: 50_000_000, Usage: "Largest frame of a streamed remote-read answer, in bytes (Prometheus' chunked_read_limit)."},
			&cli.DurationFlag{Name: "upstream.lookback-delta", Usage: "The upstream's own --query.lookback-delta. By default it is read from the upstream's /api/v1/status/flags where it serves them."},
			&cli.StringFlag{Name: "web.admin-token-file", Usage: "File holding the bearer token the deletion API (delete_series, /api/v1/tombstones, the page) demands: one token (named admin in the audit log) or one name:token line per operator. Without it (or --web.admin-user) that API is disabled."},
			&cli.StringSliceFlag{Name: "web.admin-user", Usage: "Basic-auth user of --web.config.file the deletion API admits without a token (repeatable)."},
			&cli.StringFlag{Name: "web.read-token-file", Usage: "File of name:token lines (or one token) for the query API. With it, or with --web.read-auth, the query API demands a read or admin token, a basic-auth user of --web.config.file or a verified client certificate."},
			&cli.BoolFlag{Name: "web.read-auth", Usage: "The query API demands credentials (see --web.read-token-file) even without a read token file."},
			&cli.StringFlag{Name: "web.config.file", Usage: "Prometheus exporter-toolkit web configuration (TLS, client certificates, basic auth) for every endpoint; its basic-auth users and client certificate subjects are named in the audit log."},
			&cli.Int64Flag{Name: "web.max-body-bytes", Value: proxy.DefaultMaxBodyBytes, Usage: "Largest request body (a POSTed form) accepted; larger ones get 413."},
			&cli.IntFlag{Name: "query.max-length", Value: proxy.DefaultMaxQueryLength, Usage: "Longest query or match[] parameter accepted, in bytes; longer ones get 400 bad_data."},
			&cli.DurationFlag{Name: "query.max-range", Value: proxy.DefaultMaxRange, Usage: "Longest end - start of a range query (query_range, query_exemplars); longer ones get 400 bad_data."},
			&cli.StringFlag{Name: "data-dir", Value: "./data/proxy", Usage: "Where the bucket's blocks are copied to be served (bucket mode)."},
			&cli.DurationFlag{Name: "blocks.sync-interval", Value: 30 * time.Second, Usage: "How often to look for new and deleted blocks in the bucket (bucket mode)."},
			&cli.DurationFlag{Name: "tombstones.refresh-interval", Value: 10 * time.Second, Usage: "How often to refresh tombstones from the bucket. A tombstone added elsewhere masks here within this interval."},
			&cli.DurationFlag{Name: "tombstones.max-staleness", Value: 2 * time.Minute, Usage: "Fail closed (503 on queries, /-/ready not ready) when tombstones could not be refreshed for this long."},
			&cli.StringFlag{Name: "redact.key-file", Usage: "Key for redacted tombstones, if they were written with one; otherwise the bucket's key is used."},
			&cli.DurationFlag{Name: "query.timeout", Value: 2 * time.Minute, Usage: "Maximum time a query may take before being aborted (Prometheus' --query.timeout)."},
			&cli.IntFlag{Name: "query.max-samples", Value: 50_000_000, Usage: "Maximum number of samples a single query can load into memory (Prometheus' --query.max-samples)."},
			&cli.IntFlag{Name: "query.max-concurrency", Value: 20, Usage: "Maximum number of queries executed concurrently (Prometheus' --query.max-concurrency)."},
			&cli.DurationFlag{Name: "query.lookback-delta", Usage: "How far back to look for a sample at an instant (Prometheus' --query.lookback-delta). Default: the upstream's own where it reports it, else 5m."},
			&cli.StringFlag{Name: "log.level", Value: "info", Usage: "Log level: debug, info, warn or error."},
		),
		Action: serve,
	}
	// Flags may come in any order; an unknown one is one line of error.
	if err := cliflags.Run(context.Background(), app, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "lethe-proxy: "+strings.Join(strings.Fields(err.Error()), " "))
		os.Exit(1)
	}
}

func serve(c *cli.Context) error {
	if c.NArg() > 0 {
		return errors.Newf("unexpected argument %q: lethe-proxy takes only flags", c.Args().First())
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.String("log.level"))); err != nil {
		return errors.Newf("--log.level: %s", err)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	kit := level.NewFilter(kitlog.NewLogfmtLogger(kitlog.NewSyncWriter(os.Stderr)), level.AllowWarn())
	bkt, err := bucketcfg.Open(c, kit, "lethe-proxy")
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	key, err := tombstones.ReaderKey(c.Context, bkt, c.String("redact.key-file"))
	if err != nil {
		return err
	}
	store := tombstones.NewStore(bkt, reg, tombstones.WithRedactionKey(key), tombstones.WithLogger(logger))
	mask := proxy.NewMask(store, logger, reg, c.Duration("tombstones.max-staleness"))
	if err := mask.Refresh(c.Context); err != nil {
		logger.Error("initial tombstone refresh failed; queries fail until one succeeds", "err", err)
	}

	var source proxy.Source
	var g run.Group
	// The query API reads raw series through the StoreAPI from --upstream.store (with
	// --upstream.url beside it as the fast path), else through --upstream.url, else, in the
	// StoreAPI mode, from the --store.endpoint stores, else from the bucket's blocks.
	raw, upstreamStores, endpoints := c.String("upstream.url"), c.StringSlice("upstream.store"), c.StringSlice("store.endpoint")
	var up *proxy.Upstream
	if raw != "" {
		cfg, err := upstreamConfig(c, raw)
		if err != nil {
			return err
		}
		if up, err = proxy.NewUpstream(c.Context, cfg, logger, reg); err != nil {
			return err
		}
	}
	// Beside --upstream.store, the upstream answers what no tombstone can touch.
	var fastPath *proxy.Upstream
	if len(upstreamStores) > 0 || (up == nil && len(endpoints) > 0) {
		addrs := upstreamStores
		if len(addrs) == 0 {
			addrs = endpoints
		}
		stores, closeStores, err := storeapi.Dial(addrs)
		if err != nil {
			return errors.Wrap(err, "--upstream.store")
		}
		defer func() {
			if err := closeStores(); err != nil {
				logger.Error("close store connections", "err", err)
			}
		}()
		source, fastPath = storeapi.NewSource(stores, c.StringSlice("upstream.replica-label"), false), up
		logger.Info("reading raw series through the StoreAPI", "stores", addrs, "replica_labels", c.StringSlice("upstream.replica-label"))
	} else if up != nil {
		source = up
	} else {
		blocks, err := proxy.OpenBucketBlocks(c.Context, bkt, c.String("data-dir"), logger, reg)
		if err != nil {
			return err
		}
		defer func() {
			if err := blocks.Close(); err != nil {
				logger.Error("close blocks", "err", err)
			}
		}()
		bctx, bcancel := context.WithCancel(c.Context)
		g.Add(func() error { return blocks.Run(bctx, c.Duration("blocks.sync-interval")) }, func(error) { bcancel() })
		source = blocks
	}

	pcfg := proxy.Config{
		AdminUsers:     c.StringSlice("web.admin-user"),
		ReadAuth:       c.Bool("web.read-auth"),
		QueryTimeout:   c.Duration("query.timeout"),
		MaxSamples:     c.Int("query.max-samples"),
		MaxConcurrency: c.Int("query.max-concurrency"),
		LookbackDelta:  c.Duration("query.lookback-delta"),
		Upstream:       fastPath,
		Limits: proxy.Limits{
			MaxBodyBytes:   c.Int64("web.max-body-bytes"),
			MaxQueryLength: c.Int("query.max-length"),
			MaxRange:       c.Duration("query.max-range"),
		},
	}
	if _, ok := source.(*proxy.BucketBlocks); ok {
		pcfg.Plan = bucketPlanner(bkt, logger, store.RedactionKey())
	}
	if f := c.String("web.admin-token-file"); f != "" {
		if pcfg.AdminTokens, err = proxy.ReadTokenFile(f); err != nil {
			return errors.Wrap(err, "--web.admin-token-file")
		}
	}
	if f := c.String("web.read-token-file"); f != "" {
		if pcfg.ReadTokens, err = proxy.ReadTokenFile(f); err != nil {
			return errors.Wrap(err, "--web.read-token-file")
		}
	}
	webConfig := c.String("web.config.file")
	if webConfig != "" {
		if pcfg.BasicAuthVerified, err = webConfigHasUsers(webConfig); err != nil {
			return errors.Wrap(err, "--web.config.file")
		}
	}
	if len(pcfg.AdminUsers) > 0 && !pcfg.BasicAuthVerified {
		return errors.New("--web.admin-user needs basic_auth_users in --web.config.file")
	}
	p := proxy.New(mask, source, logger, reg, pcfg)

	l, err := net.Listen("tcp", c.String("web.listen-address"))
	if err != nil {
		return errors.Wrap(err, "listen")
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second}
	logger.Info("lethe-proxy serving", "address", l.Addr().String(), "grafana_url", grafanaURL(l.Addr()))

	g.Add(func() error {
		return web.Serve(l, srv, &web.FlagConfig{WebConfigFile: &webConfig}, logger)
	}, func(error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	ctx, cancel := context.WithCancel(c.Context)
	g.Add(func() error { return mask.Run(ctx, c.Duration("tombstones.refresh-interval")) }, func(error) { cancel() })
	if eps := c.StringSlice("store.endpoint"); len(eps) > 0 {
		if err := addStoreAPI(&g, logger, reg, mask, eps, c.String("grpc-address")); err != nil {
			return err
		}
	}
	g.Add(run.SignalHandler(c.Context, os.Interrupt, syscall.SIGTERM))
	err = g.Run()
	var sig run.SignalError
	if errors.As(err, &sig) || errors.Is(err, http.ErrServerClosed) {
		logger.Info("lethe-proxy stopped", "reason", err.Error())
		return nil
	}
	return err
}

// webConfigHasUsers reports whether an exporter-toolkit web configuration lists basic_auth_users:
// then the toolkit verified every request's basic-auth user before the proxy sees it.
func webConfigHasUsers(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	var cfg struct {
		Users map[string]string `yaml:"basic_auth_users"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		return false, err
	}
	return len(cfg.Users) > 0, nil
}

// grafanaURL is the address to give Grafana's data source.
func grafanaURL(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || tcp.IP.IsUnspecified() {
		_, port, _ := net.SplitHostPort(a.String())
		return "http://localhost:" + port
	}
	return "http://" + a.String()
}

func upstreamConfig(c *cli.Context, raw string) (proxy.UpstreamConfig, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return proxy.UpstreamConfig{}, errors.Newf("--upstream.url %q: want http(s)://host[:port][/prefix]", raw)
	}
	cfg := proxy.UpstreamConfig{URL: u, Read: c.String("upstream.read"), Timeout: c.Duration("upstream.timeout"), HTTP: config_util.DefaultHTTPClientConfig,
		MaxResponseBytes: c.Int64("upstream.max-response-size"), ChunkedReadLimit: c.Uint64("upstream.remote-read-frame-limit"),
		LookbackDelta: c.Duration("upstream.lookback-delta")}
	if len(c.StringSlice("upstream.store")) == 0 && len(c.StringSlice("store.endpoint")) == 0 {
		// The upstream is the source: it cannot apply tombstones that name a replica label.
		cfg.ReplicaLabels = c.StringSlice("upstream.replica-label")
	}
	if cfg.MaxResponseBytes <= 0 || cfg.ChunkedReadLimit == 0 {
		return cfg, errors.New("--upstream.max-response-size and --upstream.remote-read-frame-limit must be positive")
	}
	if f := c.String("upstream.http-config-file"); f != "" {
		hc, _, err := config_util.LoadHTTPConfigFile(f)
		if err != nil {
			return cfg, errors.Wrap(err, "--upstream.http-config-file")
		}
		cfg.HTTP = *hc
	}
	for _, h := range c.StringSlice("upstream.header") {
		name, value, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return cfg, errors.Newf("--upstream.header %q: want 'Name: value'", h)
		}
		if cfg.Headers == nil {
			cfg.Headers = map[string]string{}
		}
		cfg.Headers[strings.TrimSpace(name)] = strings.TrimSpace(value)
	}
	if c.IsSet("upstream.external-labels") {
		ls := labels.EmptyLabels()
		if v := c.String("upstream.external-labels"); v != "" {
			m := map[string]string{}
			for _, kv := range strings.Split(v, ",") {
				k, val, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return cfg, errors.Newf("--upstream.external-labels %q: want name=value,...", v)
				}
				m[strings.TrimSpace(k)] = strings.TrimSpace(val)
			}
			ls = labels.FromMap(m)
		}
		cfg.ExternalLabels = &ls
	}
	return cfg, nil
}
