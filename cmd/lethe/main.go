// Command lethe is the operator's CLI: it registers, lists, shows and cancels tombstones in a
// bucket of Thanos blocks.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/efficientgo/core/errors"
	kitlog "github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"
	"github.com/urfave/cli/v2"

	"github.com/lethe-project/lethe/block"
	"github.com/lethe-project/lethe/internal/bucketcfg"
	"github.com/lethe-project/lethe/internal/cliflags"
	"github.com/lethe-project/lethe/tombstones"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status: 1, with one line on stderr, on
// any error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if err := cliflags.Run(ctx, newApp(stdout, stderr), args); err != nil {
		fmt.Fprintln(stderr, "lethe: "+oneLine(err))
		return 1
	}
	return 0
}

// oneLine keeps an error to one line on stderr, as operators' scripts expect.
func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

func newApp(stdout, stderr io.Writer) *cli.App {
	outputFlag := &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "Output format: table or json."}
	return &cli.App{
		Name:           "lethe",
		Usage:          "register and manage deletions (tombstones) of Prometheus series in a bucket of Thanos blocks",
		Writer:         stdout,
		ErrWriter:      stderr,
		Flags:          append(bucketcfg.Flags(), &cli.StringFlag{Name: "log.level", Value: "warn", Usage: "Log level: debug, info, warn or error. Logs go to stderr."}),
		ExitErrHandler: func(*cli.Context, error) {},
		// Selectors hold commas: never split flag values on them.
		DisableSliceFlagSeparator: true,
		Commands: []*cli.Command{{
			Name:  "tombstone",
			Usage: "add, list, show and cancel tombstones",
			Subcommands: []*cli.Command{
				{
					Name:      "add",
					Usage:     "register a deletion; prints the new tombstone id on stdout",
					ArgsUsage: " ",
					Description: "Every sample of a series that any --match selector matches, with a timestamp in [--start, --end], is\n" +
						"hidden from queries through lethe-proxy at once, and removed from the blocks by lethe-rewriter after\n" +
						"the undelete window (or at the latest after --max-wait, whatever the threshold).\n" +
						"The selectors are checked against the stored data first: a tombstone that matches no series is\n" +
						"refused unless --force.",
					Flags: []cli.Flag{
						&cli.StringSliceFlag{Name: "match", Usage: "PromQL series selector, e.g. '{job=\"api\",user_id=\"42\"}'. Repeat for several; a series is deleted if any matches. Selectors may name the blocks' external labels."},
						&cli.StringFlag{Name: "start", Usage: "Delete samples from this time on (inclusive). RFC 3339 or Unix seconds. Default: the beginning of time."},
						&cli.StringFlag{Name: "end", Usage: "Delete samples up to this time (inclusive). RFC 3339 or Unix seconds. Default: now, i.e. everything stored so far; a later end also covers samples written until then."},
						&cli.StringFlag{Name: "undelete-window", Value: "24h", Usage: "How long the tombstone can be cancelled; the rewriter waits this long before applying it. Prometheus durations (30m, 24h, 7d)."},
						&cli.StringFlag{Name: "max-wait", Value: "336h", Usage: "Time from now to the deadline: from then on the rewriter applies the tombstone whatever the threshold. At least the undelete window."},
						&cli.StringFlag{Name: "reason", Usage: "Why the data must go (ticket, GDPR request id); kept for audit."},
						&cli.StringFlag{Name: "author", Value: os.Getenv("USER"), DefaultText: "$USER", Usage: "Who asks for the deletion; kept for audit."},
						&cli.BoolFlag{Name: "redact", Usage: "Store the values of equality matchers as keyed SHA-256 digests, so the tombstone does not keep a leaked secret in the bucket. Only equality matchers (and any matcher on __name__) are allowed."},
						&cli.StringFlag{Name: "redact.key-file", Usage: "File holding the redaction key (at least 16 bytes). Without it, the key is kept in the bucket (tombstones/redaction.key), which does not protect low-entropy values such as user ids from whoever can read the bucket."},
						&cli.StringFlag{Name: "query.url", Usage: "Count matching series through this Prometheus-compatible query API instead of the bucket's blocks (for data not yet uploaded)."},
						&cli.BoolFlag{Name: "dry-run", Usage: "Print the tombstone that would be written and how many series it matches; write nothing."},
						&cli.BoolFlag{Name: "force", Usage: "Write the tombstone even if it matches no stored series, or if a selector matches every series."},
						outputFlag,
					},
					Action: add,
				},
				{
					Name:   "list",
					Usage:  "list tombstones with their state (pending, due, cancelled, applied)",
					Flags:  []cli.Flag{outputFlag, &cli.StringFlag{Name: "state", Usage: "Show only tombstones in this state: pending, due, cancelled or applied."}},
					Action: list,
				},
				{
					Name:      "show",
					Usage:     "show one tombstone",
					ArgsUsage: "ID",
					Flags:     []cli.Flag{outputFlag},
					Action:    show,
				},
				{
					Name:      "cancel",
					Usage:     "undo a tombstone inside its undelete window",
					ArgsUsage: "ID",
					Flags: []cli.Flag{
						&cli.StringFlag{Name: "reason", Usage: "Why the deletion is undone; kept for audit."},
						&cli.StringFlag{Name: "author", Value: os.Getenv("USER"), DefaultText: "$USER", Usage: "Who cancels; kept for audit."},
					},
					Action: cancel,
				},
			},
		}},
	}
}

// env is what every command builds from the global flags.
type env struct {
	bkt    objstore.Bucket
	logger *slog.Logger
}

func setup(c *cli.Context) (*env, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.String("log.level"))); err != nil {
		return nil, errors.Newf("--log.level: %s", err)
	}
	logger := slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: lvl}))
	kit := level.NewFilter(kitlog.NewLogfmtLogger(kitlog.NewSyncWriter(c.App.ErrWriter)), level.AllowWarn())
	bkt, err := bucketcfg.Open(c, kit, "lethe")
	if err != nil {
		return nil, err
	}
	return &env{bkt: bkt, logger: logger}, nil
}

func parseDuration(flag, s string) (*time.Duration, error) {
	if strings.HasPrefix(strings.TrimSpace(s), "-") {
		return nil, errors.Newf("--%s %s is negative", flag, s)
	}
	d, err := model.ParseDuration(s)
	if err != nil {
		return nil, errors.Newf("--%s: %s", flag, err)
	}
	td := time.Duration(d)
	return &td, nil
}

func parseMillis(flag, s string) (*int64, error) {
	if s == "" {
		return nil, nil
	}
	t, err := tombstones.ParseTime(s)
	if err != nil {
		return nil, errors.Newf("--%s: %s", flag, err)
	}
	ms := t.UnixMilli()
	return &ms, nil
}

func add(c *cli.Context) error {
	if c.NArg() > 0 {
		return errors.Newf("unexpected argument %q: selectors go in --match", c.Args().First())
	}
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	spec := tombstones.Spec{
		Selectors: c.StringSlice("match"),
		Reason:    c.String("reason"),
		Author:    c.String("author"),
		Redact:    c.Bool("redact"),
		Force:     c.Bool("force"),
	}
	if spec.Start, err = parseMillis("start", c.String("start")); err != nil {
		return err
	}
	if spec.End, err = parseMillis("end", c.String("end")); err != nil {
		return err
	}
	if spec.UndeleteWindow, err = parseDuration("undelete-window", c.String("undelete-window")); err != nil {
		return err
	}
	if spec.MaxWait, err = parseDuration("max-wait", c.String("max-wait")); err != nil {
		return err
	}
	// Validate what needs no bucket first, so bad input fails fast and touches nothing.
	sels, err := tombstones.ParseSelectors(spec.Selectors)
	if err != nil {
		return err
	}
	if c.String("redact.key-file") != "" && !spec.Redact {
		return errors.New("--redact.key-file is only used with --redact")
	}
	e, err := setup(c)
	if err != nil {
		return err
	}
	// A bucket without a redaction key gets one only when a redacted tombstone is really written:
	// until then a throwaway key validates and shows the result.
	key, keyMissing, err := redactionKey(c, e.bkt, spec.Redact)
	if err != nil {
		return err
	}
	store := tombstones.NewStore(e.bkt, nil, tombstones.WithLogger(e.logger), tombstones.WithRedactionKey(key))
	t, err := store.Build(spec)
	if err != nil {
		return err
	}

	matched, source, err := countMatches(c, e, sels, t)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.ErrWriter, "%s matches %d series in [%s, %s]\n", source, matched, tombstones.FormatMillis(t.Start), tombstones.FormatMillis(t.End))
	if matched == 0 && !spec.Force {
		return errors.Newf("the selectors match no stored series in [%s, %s]; nothing to delete (use --force to register it anyway)", tombstones.FormatMillis(t.Start), tombstones.FormatMillis(t.End))
	}

	if c.Bool("dry-run") {
		fmt.Fprintln(c.App.ErrWriter, "dry run: nothing written")
		return printEntries(c.App.Writer, format, []*tombstones.Entry{{Tombstone: t}}, nil, store.Now(), true)
	}
	if keyMissing {
		if key, err = tombstones.LoadOrCreateBucketKey(c.Context, e.bkt); err != nil {
			return err
		}
		store = tombstones.NewStore(e.bkt, nil, tombstones.WithLogger(e.logger), tombstones.WithRedactionKey(key))
		if t, err = store.Build(spec); err != nil {
			return err
		}
	}
	if err := store.Put(c.Context, t); err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, t.ID.String())
	return nil
}

// redactionKey returns the key from --redact.key-file, or else the bucket's key. If the bucket has
// none yet, it returns a throwaway key and reports it missing, so that nothing is written before the
// tombstone itself is.
func redactionKey(c *cli.Context, bkt objstore.Bucket, redact bool) (*tombstones.RedactionKey, bool, error) {
	if !redact {
		return nil, false, nil
	}
	key, err := tombstones.ReaderKey(c.Context, bkt, c.String("redact.key-file"))
	if err != nil || key != nil {
		return key, false, err
	}
	key, err = tombstones.NewRedactionKey([]byte(ulid.Make().String()))
	return key, true, err
}

func countMatches(c *cli.Context, e *env, sels [][]*labels.Matcher, t *tombstones.Tombstone) (int, string, error) {
	if url := c.String("query.url"); url != "" {
		n, err := tombstones.CountSeriesByQuery(c.Context, url, sels, t.Start, t.End)
		return n, url, err
	}
	m, err := block.CountMatches(c.Context, e.bkt, sels, t.Start, t.End)
	if err != nil {
		return 0, "", err
	}
	for _, p := range m.Problems {
		fmt.Fprintf(c.App.ErrWriter, "warning: block %s skipped: %s\n", p.Block, oneLine(p.Err))
	}
	return m.Series, fmt.Sprintf("the bucket (%d blocks read, %d KiB of index fetched; %d blocks hold matches, a series counts once per block)",
		m.BlocksRead, m.BytesFetched>>10, m.Blocks), nil
}

func list(c *cli.Context) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	state := tombstones.State(c.String("state"))
	switch state {
	case "", tombstones.StatePending, tombstones.StateDue, tombstones.StateCancelled, tombstones.StateApplied:
	default:
		return errors.Newf("--state %q: want pending, due, cancelled or applied", state)
	}
	e, err := setup(c)
	if err != nil {
		return err
	}
	store := tombstones.NewStore(e.bkt, nil, tombstones.WithLogger(e.logger))
	set, err := store.Sync(c.Context)
	if err != nil {
		return err
	}
	entries := set.Entries
	if state != "" {
		entries = nil
		for _, en := range set.Entries {
			if en.State(set.At) == state {
				entries = append(entries, en)
			}
		}
	}
	return printEntries(c.App.Writer, format, entries, set.Broken, set.At, false)
}

func lookup(c *cli.Context) (*tombstones.Set, *tombstones.Entry, *env, error) {
	if c.NArg() != 1 {
		return nil, nil, nil, errors.New("expected exactly one tombstone id")
	}
	id, err := ulid.ParseStrict(c.Args().First())
	if err != nil {
		return nil, nil, nil, errors.Newf("%q is not a tombstone id (a ULID)", c.Args().First())
	}
	e, err := setup(c)
	if err != nil {
		return nil, nil, nil, err
	}
	set, err := tombstones.NewStore(e.bkt, nil, tombstones.WithLogger(e.logger)).Sync(c.Context)
	if err != nil {
		return nil, nil, nil, err
	}
	en, ok := set.Get(id)
	if !ok {
		return nil, nil, nil, errors.Newf("no tombstone with id %s", id)
	}
	return set, en, e, nil
}

func show(c *cli.Context) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	set, en, _, err := lookup(c)
	if err != nil {
		return err
	}
	return printEntries(c.App.Writer, format, []*tombstones.Entry{en}, nil, set.At, true)
}

func cancel(c *cli.Context) error {
	_, en, e, err := lookup(c)
	if err != nil {
		return err
	}
	store := tombstones.NewStore(e.bkt, nil, tombstones.WithLogger(e.logger))
	cn, err := store.Cancel(c.Context, en.ID, c.String("reason"), c.String("author"))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "cancelled %s (cancellation %s)\n", en.ID, cn.ID)
	return nil
}
