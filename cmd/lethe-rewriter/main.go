// Command lethe-rewriter is the scheduled job that rewrites blocks with their due tombstones
// applied. Run it from cron or a Kubernetes CronJob; it is never a sidecar.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/efficientgo/core/errors"
	kitlog "github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/push"
	"github.com/thanos-io/objstore"
	"github.com/urfave/cli/v2"

	"github.com/lethe-project/lethe/internal/bucketcfg"
	"github.com/lethe-project/lethe/internal/cliflags"
	"github.com/lethe-project/lethe/rewriter"
	"github.com/lethe-project/lethe/tombstones"
)

// Exit codes of CONTRACT.md.
const (
	exitError     = 1
	exitBudget    = 3
	exitBadBlocks = 4
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitCode carries a non-error exit status out of an action.
type exitCode int

func (e exitCode) Error() string { return "exit " + strconv.Itoa(int(e)) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := &cli.App{
		Name:      "lethe-rewriter",
		Usage:     "rewrite blocks with their due tombstones applied (a scheduled job, not a sidecar)",
		Writer:    stdout,
		ErrWriter: stderr,
		// Global flags: accepted before or after the command.
		Flags: append(bucketcfg.Flags(),
			&cli.Float64Flag{Name: "threshold", Value: 0.05, Usage: "Rewrite a block once the deleted share of its samples reaches this (Prometheus' 5%); below it, only once a tombstone's deadline has passed."},
			&cli.StringFlag{Name: "redact.key-file", Usage: "Key for redacted tombstones written with one; otherwise the bucket's key is used."},
			&cli.StringFlag{Name: "log.level", Value: "info", Usage: "Log level: debug, info, warn or error. Logs go to stderr."},
		),
		ExitErrHandler: func(*cli.Context, error) {},
		Commands: []*cli.Command{
			{
				Name:   "plan",
				Usage:  "print the jobs a run would do, changing nothing",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "Output format: table or json."}},
				Action: plan,
			},
			{
				Name:  "run",
				Usage: "rewrite every block the plan decides to rewrite",
				Description: "Exit status: 0 done or nothing due; 1 error; 3 stopped by --time-budget with work left (the next run\n" +
					"resumes); 4 done, but bad blocks were skipped (named in the logs).",
				Flags: []cli.Flag{
					&cli.IntFlag{Name: "batch.series", Value: 10_000, Usage: "Series streamed per batch; the rate limits and the time budget are checked between batches."},
					&cli.Float64Flag{Name: "rate.series-per-second", Usage: "Average series per second at most (0: no limit)."},
					&cli.Float64Flag{Name: "rate.bytes-per-second", Usage: "Average chunk bytes read per second at most (0: no limit)."},
					&cli.IntFlag{Name: "concurrency", Value: 1, Usage: "Blocks rewritten at once."},
					&cli.DurationFlag{Name: "time-budget", Usage: "Stop after this long with exit status 3, leaving the rest to the next run (0: no limit)."},
					&cli.DurationFlag{Name: "checkpoint.interval", Value: 5 * time.Minute, Usage: "While streaming a block, save a checkpoint to the bucket this often, so that a crashed run's successor redoes at most this much of it (0: only at the time budget)."},
					&cli.StringFlag{Name: "tmp.dir", Value: os.TempDir(), Usage: "Where blocks are downloaded and rewritten; needs about twice the largest block. Created if missing."},
					&cli.BoolFlag{Name: "dry-run", Usage: "Plan and log what would be rewritten; change nothing."},
					&cli.DurationFlag{Name: "delete-delay", Value: 48 * time.Hour, Usage: "Delete the blocks this rewriter replaced once their deletion mark is this old (Thanos' default). 0 leaves deletion to a Thanos compactor."},
					&cli.StringFlag{Name: "shard", Usage: "i/n: take only the blocks of shard i of n (0-based), for several workers on one bucket (e.g. a Kubernetes indexed Job)."},
					&cli.BoolFlag{Name: "nice", Value: true, Usage: "Run at the lowest CPU and idle IO priority where the OS allows."},
					&cli.DurationFlag{Name: "lease.ttl", Value: 10 * time.Minute, Usage: "How long a block's lease keeps other workers off it; renewed while the job runs. A lease of a crashed process of this host is taken over at once."},
					&cli.DurationFlag{Name: "upload.stale-after", Usage: "How old a partial upload of another worker must be, with no live lease on its source, before a run removes it. Default: --lease.ttl."},
					&cli.IntFlag{Name: "bucket.retries", Value: 4, Usage: "How many times in all a bucket call that failed for a reason that may pass (timeouts, 5xx) is tried."},
					&cli.DurationFlag{Name: "bucket.retry-backoff", Value: 200 * time.Millisecond, Usage: "The first wait between two tries of a bucket call; doubled after each."},
					&cli.StringFlag{Name: "pushgateway.url", Usage: "Push the run's metrics to this Pushgateway when done (job lethe-rewriter)."},
					&cli.StringFlag{Name: "web.listen-address", Usage: "Serve /metrics here while running (e.g. :9096); off by default."},
					&cli.StringFlag{Name: "debug.exit-at", Hidden: true, Usage: "Test hook: exit right after a phase (download, checkpoint, rewrite, upload-meta, mark)."},
				},
				Action: runJobs,
			},
		},
	}
	err := cliflags.Run(ctx, app, args)
	var code exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	default:
		fmt.Fprintln(stderr, "lethe-rewriter: "+strings.Join(strings.Fields(err.Error()), " "))
		return exitError
	}
}

func setup(c *cli.Context, reg prometheus.Registerer) (objstore.Bucket, *tombstones.Store, *slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.String("log.level"))); err != nil {
		return nil, nil, nil, errors.Newf("--log.level: %s", err)
	}
	logger := slog.New(slog.NewJSONHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: lvl}))
	kit := level.NewFilter(kitlog.NewLogfmtLogger(kitlog.NewSyncWriter(c.App.ErrWriter)), level.AllowWarn())
	bkt, err := bucketcfg.Open(c, kit, "lethe-rewriter")
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := tombstones.ReaderKey(c.Context, bkt, c.String("redact.key-file"))
	if err != nil {
		return nil, nil, nil, err
	}
	t := c.Float64("threshold")
	if t < 0 || t > 1 {
		return nil, nil, nil, errors.Newf("--threshold %g: want a share between 0 and 1", t)
	}
	return bkt, tombstones.NewStore(bkt, reg, tombstones.WithRedactionKey(key), tombstones.WithLogger(logger)), logger, nil
}

// planOutput is plan's JSON: the plan of due tombstones, and the pending ones.
type planOutput struct {
	*rewriter.Plan
	Pending []rewriter.Pending `json:"pending"`
}

func plan(c *cli.Context) error {
	format := c.String("output")
	if format != "table" && format != "json" {
		return errors.Newf("--output %q: want table or json", format)
	}
	bkt, store, logger, err := setup(c, nil)
	if err != nil {
		return err
	}
	// One look at the tombstones for both views, so that each tombstone is either due or pending.
	set, err := store.Sync(c.Context)
	if err != nil {
		return err
	}
	planner := rewriter.NewPlanner(bkt, logger, c.Float64("threshold"), store.RedactionKey())
	p, err := planner.Plan(c.Context, set)
	if err != nil {
		return err
	}
	pending, problems, err := planner.Pending(c.Context, set)
	if err != nil {
		return err
	}
	for _, pr := range problems {
		if !slices.Contains(p.Problems, pr) {
			p.Problems = append(p.Problems, pr)
		}
	}
	if format == "json" {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(planOutput{Plan: p, Pending: pending})
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BLOCK\tFROM\tTO\tRES\tTOMBSTONES\tSERIES\tAFFECTED\tDELETED\tDECISION\tWHY")
	for _, j := range p.Jobs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%.1f%%\t%s\t%s\n", j.Block,
			stamp(time.UnixMilli(j.MinTime)), stamp(time.UnixMilli(j.MaxTime)),
			resolution(j.Resolution), len(j.Tombstones), j.Series, j.SeriesAffected, j.DeletedShare*100, j.Decision, j.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%d due tombstones, %d jobs\n", len(p.Due), len(p.Jobs))
	if len(pending) > 0 {
		fmt.Fprintln(c.App.Writer)
		if err := printPending(c.App.Writer, pending); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.App.Writer, "%d pending tombstones (cancellable until DUE AT; rewritten from then on where the threshold is reached, and after DEADLINE whatever it)\n", len(pending))
	for _, pr := range p.Problems {
		fmt.Fprintf(c.App.Writer, "bad block: %s\n", pr)
	}
	return nil
}

// printPending writes one line per pending tombstone and block it will touch.
func printPending(w io.Writer, pending []rewriter.Pending) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PENDING TOMBSTONE\tDUE AT\tDEADLINE\tBLOCKS IT WILL TOUCH")
	for _, pt := range pending {
		blocks := []string{"none: no stored samples match"}
		if len(pt.Blocks) > 0 {
			blocks = blocks[:0]
			for _, b := range pt.Blocks {
				blocks = append(blocks, b.String())
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", pt.Tombstone, stamp(pt.DueAt), stamp(pt.Deadline), blocks[0])
		for _, b := range blocks[1:] {
			fmt.Fprintf(tw, "\t\t\t%s\n", b)
		}
	}
	return tw.Flush()
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func resolution(ms int64) string {
	if ms == 0 {
		return "raw"
	}
	return (time.Duration(ms) * time.Millisecond).String()
}

func runJobs(c *cli.Context) error {
	reg := prometheus.NewRegistry()
	bkt, store, logger, err := setup(c, reg)
	if err != nil {
		return err
	}
	shard, shards, err := parseShard(c.String("shard"))
	if err != nil {
		return err
	}
	if err := prepareTmpDir(c.String("tmp.dir")); err != nil {
		return err
	}
	if c.Bool("nice") {
		lowerPriority(logger)
	}
	if addr := c.String("web.listen-address"); addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return errors.Wrap(err, "listen")
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
	}
	host, _ := os.Hostname()
	cfg := rewriter.Config{
		Threshold: c.Float64("threshold"),
		Limits: rewriter.Limits{
			BatchSeries:     c.Int("batch.series"),
			SeriesPerSecond: c.Float64("rate.series-per-second"),
			BytesPerSecond:  c.Float64("rate.bytes-per-second"),
		},
		Concurrency:      c.Int("concurrency"),
		TmpDir:           c.String("tmp.dir"),
		DryRun:           c.Bool("dry-run"),
		DeleteDelay:      c.Duration("delete-delay"),
		Shard:            shard,
		Shards:           shards,
		Owner:            fmt.Sprintf("%s/%d", host, os.Getpid()),
		OwnerGone:        processGone(host),
		LeaseTTL:         c.Duration("lease.ttl"),
		Retries:          c.Int("bucket.retries"),
		RetryBackoff:     c.Duration("bucket.retry-backoff"),
		StaleUploadAfter: c.Duration("upload.stale-after"),
		AtPhase:          exitAtPhase(logger, c.String("debug.exit-at")),

		CheckpointEvery: c.Duration("checkpoint.interval"),
	}
	if b := c.Duration("time-budget"); b > 0 {
		cfg.Limits.Deadline = time.Now().Add(b)
	}
	r := rewriter.NewRunner(bkt, store, logger, reg, cfg)
	rep, err := r.Run(c.Context)
	if url := c.String("pushgateway.url"); url != "" {
		if perr := push.New(url, "lethe-rewriter").Gatherer(reg).Push(); perr != nil {
			logger.Error("push metrics", "url", url, "err", perr)
		}
	}
	if err != nil {
		return err
	}
	logger.Info("run done", "rewritten", len(rep.Rewritten), "left_to_other_workers", len(rep.Leased), "applied", len(rep.Applied), "deleted", len(rep.Deleted),
		"stopped_by_budget", rep.Stopped, "bad_blocks", len(rep.Bad), "dry_run", cfg.DryRun)
	switch {
	case rep.Stopped:
		return exitCode(exitBudget)
	case len(rep.Bad) > 0:
		for _, b := range rep.Bad {
			logger.Warn("bad block skipped", "problem", b)
		}
		return exitCode(exitBadBlocks)
	}
	return nil
}

// prepareTmpDir creates the working directory, as Thanos does its --tmp.dir, and checks that
// jobs can make their directories in it: a directory that cannot be used is one error at start,
// not a bad block per job.
func prepareTmpDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return errors.Wrap(err, "create --tmp.dir")
	}
	probe, err := os.MkdirTemp(dir, ".lethe-probe-")
	if err != nil {
		return errors.Wrap(err, "--tmp.dir is not writable")
	}
	if err := os.Remove(probe); err != nil {
		return errors.Wrap(err, "remove the probe of --tmp.dir")
	}
	return nil
}

// exitAtPhase is the --debug.exit-at crash-test hook: it exits the process right after the phase.
func exitAtPhase(logger *slog.Logger, phase string) func(string) {
	if phase == "" {
		return nil
	}
	return func(p string) {
		if p == phase {
			logger.Warn("exiting at phase as asked (crash test)", "phase", p)
			os.Exit(137)
		}
	}
}

func parseShard(s string) (int, int, error) {
	if s == "" {
		return 0, 1, nil
	}
	a, b, ok := strings.Cut(s, "/")
	i, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || n < 1 || i < 0 || i >= n {
		return 0, 0, errors.Newf("--shard %q: want i/n with 0 <= i < n", s)
	}
	return i, n, nil
}

// lowerPriority makes the process the last in line for CPU and disk (Linux: nice 19 and the idle
// IO class); elsewhere it does what it can.
func lowerPriority(logger *slog.Logger) {
	if err := syscall.Setpriority(syscall.PRIO_PROCESS, 0, 19); err != nil {
		logger.Debug("lower CPU priority", "err", err)
	}
	const ioprioWhoProcess, ioprioClassIdle, ioprioClassShift = 1, 3, 13
	if _, _, errno := syscall.Syscall(syscall.SYS_IOPRIO_SET, ioprioWhoProcess, 0, ioprioClassIdle<<ioprioClassShift); errno != 0 {
		logger.Debug("lower IO priority", "err", errno.Error())
	}
}

// processGone recognizes a lease owner ("host/pid") that was a process of this host and no longer
// runs: a crashed earlier run, whose lease need not be waited out.
func processGone(host string) func(owner string) bool {
	return func(owner string) bool {
		h, p, ok := strings.Cut(owner, "/")
		pid, err := strconv.Atoi(p)
		if !ok || err != nil || h != host || pid <= 0 {
			return false
		}
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
}
