// Command lethe-demo fills a local FILESYSTEM bucket with real TSDB blocks of generated series,
// among them one that leaked a secret token into a label, for the newcomer's demo (make demo).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"
	"github.com/urfave/cli/v2"

	"github.com/lethe-project/lethe/internal/cliflags"
	"github.com/lethe-project/lethe/internal/synth"
)

func main() {
	app := &cli.App{
		Name:  "lethe-demo",
		Usage: "write a demo bucket of Thanos blocks with generated series",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Value: "./data/demo", Usage: "Directory of the FILESYSTEM bucket to fill. Existing blocks are kept."},
			&cli.IntFlag{Name: "blocks", Value: 3, Usage: "How many consecutive 2h blocks to write, the last one ending now."},
			&cli.IntFlag{Name: "users", Value: 50, Usage: "How many user_id values the generated series carry."},
		},
		Action: run,
	}
	if err := cliflags.Run(context.Background(), app, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "lethe-demo:", err)
		os.Exit(1)
	}
}

func run(c *cli.Context) error {
	dir := c.String("dir")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return errors.Wrap(err, "create bucket directory")
	}
	bkt, err := filesystem.NewBucket(dir)
	if err != nil {
		return errors.Wrap(err, "open bucket")
	}
	tmp, err := os.MkdirTemp("", "lethe-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	series := demoSeries(c.Int("users"))
	const blockRange = int64(2 * time.Hour / time.Millisecond)
	end := time.Now().UnixMilli() / 60_000 * 60_000
	ctx := context.Background()
	for i := c.Int("blocks"); i > 0; i-- {
		mint := end - int64(i)*blockRange
		id, err := synth.Upload(ctx, bkt, tmp, synth.Block{
			Series:   series,
			MinTime:  mint,
			MaxTime:  mint + blockRange,
			Step:     15_000,
			External: map[string]string{"cluster": "demo", "replica": "0"},
		})
		if err != nil {
			return err
		}
		fmt.Printf("block %s  %s .. %s  %d series\n", id, time.UnixMilli(mint).UTC().Format(time.RFC3339),
			time.UnixMilli(mint+blockRange).UTC().Format(time.RFC3339), len(series))
	}
	abs, _ := filepath.Abs(dir)
	fmt.Printf("bucket: %s\n", abs)
	return nil
}

// demoSeries returns request counters per user and path, plus one series whose "token" label
// holds a leaked secret.
func demoSeries(users int) []labels.Labels {
	var out []labels.Labels
	for u := 0; u < users; u++ {
		for _, path := range []string{"/login", "/orders", "/search"} {
			out = append(out, labels.FromStrings("__name__", "http_requests_total", "job", "api", "instance", "api-0:8080",
				"path", path, "user_id", strconv.Itoa(u)))
		}
	}
	out = append(out, labels.FromStrings("__name__", "http_requests_total", "job", "api", "instance", "api-0:8080",
		"path", "/debug", "token", "s3cr3t-demo-token"))
	return out
}
