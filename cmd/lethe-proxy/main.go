// Command lethe-proxy serves the Prometheus HTTP API with tombstoned samples masked, in front of a
// Prometheus-compatible server or over the bucket's blocks.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/efficientgo/core/errors"
	kitlog "github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"

	"github.com/lethe-project/lethe/internal/bucketcfg"
	"github.com/lethe-project/lethe/proxy"
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
			&cli.StringFlag{Name: "data-dir", Value: "./data/proxy", Usage: "Where the bucket's blocks are copied to be served (bucket mode)."},
			&cli.DurationFlag{Name: "blocks.sync-interval", Value: 30 * time.Second, Usage: "How often to look for new and deleted blocks in the bucket (bucket mode)."},
			&cli.DurationFlag{Name: "tombstones.refresh-interval", Value: 10 * time.Second, Usage: "How often to refresh tombstones from the bucket. A tombstone added elsewhere masks here within this interval."},
			&cli.DurationFlag{Name: "tombstones.max-staleness", Value: 2 * time.Minute, Usage: "Fail closed (503 on queries, /-/ready not ready) when tombstones could not be refreshed for this long."},
			&cli.StringFlag{Name: "redact.key-file", Usage: "Key for redacted tombstones, if they were written with one; otherwise the bucket's key is used."},
			&cli.DurationFlag{Name: "query.timeout", Value: 2 * time.Minute, Usage: "Maximum time a query may take before being aborted (Prometheus' --query.timeout)."},
			&cli.IntFlag{Name: "query.max-samples", Value: 50_000_000, Usage: "Maximum number of samples a single query can load into memory (Prometheus' --query.max-samples)."},
			&cli.IntFlag{Name: "query.max-concurrency", Value: 20, Usage: "Maximum number of queries executed concurrently (Prometheus' --query.max-concurrency)."},
			&cli.DurationFlag{Name: "query.lookback-delta", Value: 5 * time.Minute, Usage: "How far back to look for a sample at an instant (Prometheus' --query.lookback-delta)."},
			&cli.StringFlag{Name: "log.level", Value: "info", Usage: "Log level: debug, info, warn or error."},
		),
		Action: serve,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "lethe-proxy: "+err.Error())
		os.Exit(1)
	}
}

func serve(c *cli.Context) error {
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

	var opts []tombstones.Option
	if f := c.String("redact.key-file"); f != "" {
		key, err := tombstones.ReadRedactionKeyFile(f)
		if err != nil {
			return err
		}
		opts = append(opts, tombstones.WithRedactionKey(key))
	} else if key, err := tombstones.LoadBucketKey(c.Context, bkt); err == nil {
		opts = append(opts, tombstones.WithRedactionKey(key))
	} else if !bkt.IsObjNotFoundErr(errors.Cause(err)) {
		return err
	}
	store := tombstones.NewStore(bkt, reg, append(opts, tombstones.WithLogger(logger))...)
	mask := proxy.NewMask(store, logger, reg, c.Duration("tombstones.max-staleness"))
	if err := mask.Refresh(c.Context); err != nil {
		logger.Error("initial tombstone refresh failed; queries fail until one succeeds", "err", err)
	}

	blocks := proxy.NewBucketBlocks(bkt, c.String("data-dir"), logger, reg)
	if err := os.MkdirAll(c.String("data-dir"), 0o755); err != nil {
		return errors.Wrap(err, "create --data-dir")
	}
	if err := blocks.Sync(c.Context); err != nil {
		return errors.Wrap(err, "initial block sync")
	}
	defer func() {
		if err := blocks.Close(); err != nil {
			logger.Error("close blocks", "err", err)
		}
	}()

	p := proxy.New(mask, blocks, logger, reg, proxy.Config{
		QueryTimeout:   c.Duration("query.timeout"),
		MaxSamples:     c.Int("query.max-samples"),
		MaxConcurrency: c.Int("query.max-concurrency"),
		LookbackDelta:  c.Duration("query.lookback-delta"),
	})

	l, err := net.Listen("tcp", c.String("web.listen-address"))
	if err != nil {
		return errors.Wrap(err, "listen")
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second}
	logger.Info("lethe-proxy serving", "address", l.Addr().String(), "grafana_url", "http://"+l.Addr().String())

	var g run.Group
	g.Add(func() error { return srv.Serve(l) }, func(error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	ctx, cancel := context.WithCancel(c.Context)
	g.Add(func() error { return mask.Run(ctx, c.Duration("tombstones.refresh-interval")) }, func(error) { cancel() })
	bctx, bcancel := context.WithCancel(c.Context)
	g.Add(func() error {
		t := time.NewTicker(c.Duration("blocks.sync-interval"))
		defer t.Stop()
		for {
			select {
			case <-bctx.Done():
				return nil
			case <-t.C:
				if err := blocks.Sync(bctx); err != nil && bctx.Err() == nil {
					logger.Error("block sync", "err", err)
				}
			}
		}
	}, func(error) { bcancel() })
	g.Add(run.SignalHandler(c.Context, os.Interrupt, syscall.SIGTERM))
	err = g.Run()
	var sig run.SignalError
	if errors.As(err, &sig) || errors.Is(err, http.ErrServerClosed) {
		logger.Info("lethe-proxy stopped", "reason", err.Error())
		return nil
	}
	return err
}
