package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// userSeries is one series of metric x a user, user_id 0 to n-1.
func userSeries(n int) []labels.Labels {
	series := make([]labels.Labels, 0, n)
	for u := 0; u < n; u++ {
		series = append(series, labels.FromStrings("__name__", "x", "user_id", fmt.Sprint(u)))
	}
	return series
}

// userBucket writes one two-hour block of userSeries(users), two days old, into a FILESYSTEM
// bucket and returns the bucket and the --objstore.config flag for it.
func userBucket(t *testing.T, users int) (objstore.Bucket, string) {
	t.Helper()
	dir := t.TempDir()
	bkt, err := filesystem.NewBucket(dir)
	testutil.Ok(t, err)
	start := time.Now().Add(-48 * time.Hour).UnixMilli()
	_, err = synth.Upload(context.Background(), bkt, t.TempDir(), synth.Block{Series: userSeries(users), MinTime: start, MaxTime: start + 7_200_000, Step: 60_000})
	testutil.Ok(t, err)
	return bkt, "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dir + "}"
}

// TestRunPushesMetrics: a cron run pushes its metrics to the Pushgateway when done.
func TestRunPushesMetrics(t *testing.T) {
	bkt, conf := userBucket(t, 4)
	zero := time.Duration(0)
	_, err := tombstones.NewStore(bkt, nil).Add(context.Background(), tombstones.Spec{Selectors: []string{`{user_id="1"}`}, UndeleteWindow: &zero, MaxWait: &zero})
	testutil.Ok(t, err)

	var (
		mu     sync.Mutex
		pushed []string
	)
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		pushed = append(pushed, r.Method+" "+r.URL.Path+" "+string(b))
		mu.Unlock()
	}))
	defer gw.Close()

	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"lethe-rewriter", conf,
		"run", "--tmp.dir", t.TempDir(), "--pushgateway.url", gw.URL, "--nice=false"}, &stdout, &stderr)
	testutil.Equals(t, 0, code, stderr.String())
	mu.Lock()
	defer mu.Unlock()
	testutil.Equals(t, 1, len(pushed))
	testutil.Assert(t, strings.HasPrefix(pushed[0], "PUT /metrics/job/lethe-rewriter "), pushed[0])
	// The body is the protobuf exposition format: the metric names are in it as strings.
	testutil.Assert(t, strings.Contains(pushed[0], "lethe_rewriter_blocks_rewritten_total"), "pushed: %q", pushed[0])
	testutil.Assert(t, strings.Contains(stderr.String(), `"msg":"run done","rewritten":1`), stderr.String())
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	conf := "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dir + "}"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lethe-rewriter", conf, "run", "--shard", "3/2"}, "want i/n with 0 <= i < n"},
		{[]string{"lethe-rewriter", conf, "run", "--threshold", "2"}, "want a share between 0 and 1"},
		{[]string{"lethe-rewriter", conf, "plan", "--output", "yaml"}, "want table or json"},
		{[]string{"lethe-rewriter", "plan"}, "no bucket configured"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		testutil.Equals(t, 1, code, tc.args)
		testutil.Assert(t, strings.Contains(stderr.String(), tc.want), "want %q in %q", tc.want, stderr.String())
	}
}

// TestGlobalFlagsOnEitherSide: the bucket, threshold and log flags work before and after the
// command, as CONTRACT.md writes them.
func TestGlobalFlagsOnEitherSide(t *testing.T) {
	bkt, conf := userBucket(t, 100)
	zero := time.Duration(0)
	// One user of 100: a deleted share of 1%, under the default threshold.
	_, err := tombstones.NewStore(bkt, nil).Add(context.Background(), tombstones.Spec{Selectors: []string{`{user_id="1"}`}, UndeleteWindow: &zero})
	testutil.Ok(t, err)

	for _, args := range [][]string{
		{"lethe-rewriter", conf, "--threshold=0.005", "plan"},
		{"lethe-rewriter", "plan", conf, "--threshold", "0.005"},
		{"lethe-rewriter", "plan", "--output", "table", "--threshold", "0.005", conf, "--log.level=debug"},
	} {
		var stdout, stderr bytes.Buffer
		testutil.Equals(t, 0, run(context.Background(), args, &stdout, &stderr), stderr.String())
		testutil.Assert(t, strings.Contains(stdout.String(), "deleted share reaches the threshold"), "%q: %s", args, stdout.String())
	}
	var stdout, stderr bytes.Buffer
	testutil.Equals(t, 0, run(context.Background(), []string{"lethe-rewriter", "plan", conf}, &stdout, &stderr), stderr.String())
	testutil.Assert(t, strings.Contains(stdout.String(), "deleted share below the threshold"), stdout.String())

	stdout.Reset()
	stderr.Reset()
	code := run(context.Background(), []string{"lethe-rewriter", "run", "--tmp.dir", t.TempDir(), conf, "--nice=false", "--threshold=0.005", "--log.level", "warn"}, &stdout, &stderr)
	testutil.Equals(t, 0, code, stderr.String())
	// --log.level=warn hides the run's info lines.
	testutil.Assert(t, !strings.Contains(stderr.String(), "run done"), stderr.String())
	// The threshold given after the command reached the run: the block was rewritten and marked.
	marked := 0
	testutil.Ok(t, bkt.Iter(context.Background(), "", func(name string) error {
		if ok, err := bkt.Exists(context.Background(), name+"deletion-mark.json"); err != nil || ok {
			marked++
			return err
		}
		return nil
	}))
	testutil.Equals(t, 1, marked)
}

// TestUnknownFlagIsOneLine: an unknown flag, or one of the other command, is one line on stderr
// and exit status 1, never the help.
func TestUnknownFlagIsOneLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lethe-rewriter", "plan", "--foo"}, "lethe-rewriter: flag provided but not defined: -foo\n"},
		{[]string{"lethe-rewriter", "--foo", "run"}, "lethe-rewriter: flag provided but not defined: -foo\n"},
		{[]string{"lethe-rewriter", "plan", "--concurrency=2"}, "lethe-rewriter: flag provided but not defined: -concurrency\n"},
		{[]string{"lethe-rewriter", "run", "--concurrency=many"}, "lethe-rewriter: invalid value \"many\" for flag -concurrency: parse error\n"},
		{[]string{"lethe-rewriter", "plna"}, "lethe-rewriter: unknown command \"plna\": want plan, run\n"},
	} {
		var stdout, stderr bytes.Buffer
		testutil.Equals(t, 1, run(context.Background(), tc.args, &stdout, &stderr), tc.args)
		testutil.Equals(t, "", stdout.String(), tc.args)
		testutil.Equals(t, tc.want, stderr.String(), tc.args)
	}
}

// TestHelpListsGlobalFlags: plan's and run's help list the global flags they accept.
func TestHelpListsGlobalFlags(t *testing.T) {
	for _, cmd := range []string{"plan", "run"} {
		var stdout, stderr bytes.Buffer
		testutil.Equals(t, 0, run(context.Background(), []string{"lethe-rewriter", cmd, "--help"}, &stdout, &stderr), stderr.String())
		_, global, ok := strings.Cut(stdout.String(), "GLOBAL OPTIONS:")
		testutil.Assert(t, ok, "%s: no global options: %s", cmd, stdout.String())
		for _, f := range []string{"--objstore.config-file value", "--objstore.config value", "--threshold value", "--redact.key-file value", "--log.level value"} {
			testutil.Assert(t, strings.Contains(global, f), "%s help lacks %s: %s", cmd, f, stdout.String())
		}
	}
}

// TestTmpDir: a missing --tmp.dir is created and the run rewrites its block; one that cannot be
// created is one error at start (exit 1) that changes nothing, never a bad block (exit 4).
func TestTmpDir(t *testing.T) {
	newBucket := func(t *testing.T) (string, string) {
		dir := t.TempDir()
		bkt, err := filesystem.NewBucket(dir)
		testutil.Ok(t, err)
		start := time.Now().Add(-48 * time.Hour).UnixMilli()
		series := []labels.Labels{labels.FromStrings("__name__", "x", "user_id", "1"), labels.FromStrings("__name__", "x", "user_id", "2")}
		_, err = synth.Upload(context.Background(), bkt, t.TempDir(), synth.Block{Series: series, MinTime: start, MaxTime: start + 7_200_000, Step: 60_000})
		testutil.Ok(t, err)
		zero := time.Duration(0)
		_, err = tombstones.NewStore(bkt, nil).Add(context.Background(), tombstones.Spec{Selectors: []string{`{user_id="1"}`}, UndeleteWindow: &zero})
		testutil.Ok(t, err)
		return dir, "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dir + "}"
	}

	t.Run("created", func(t *testing.T) {
		_, conf := newBucket(t)
		tmp := filepath.Join(t.TempDir(), "var", "tmp", "lethe")
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"lethe-rewriter", "run", conf, "--tmp.dir=" + tmp, "--nice=false"}, &stdout, &stderr)
		testutil.Equals(t, 0, code, stderr.String())
		testutil.Assert(t, strings.Contains(stderr.String(), `"msg":"run done","rewritten":1`), stderr.String())
		fi, err := os.Stat(tmp)
		testutil.Ok(t, err)
		testutil.Assert(t, fi.IsDir())
		left, err := os.ReadDir(tmp)
		testutil.Ok(t, err)
		testutil.Equals(t, 0, len(left), "the run left files in --tmp.dir: %v", left)
	})

	file := filepath.Join(t.TempDir(), "file")
	testutil.Ok(t, os.WriteFile(file, []byte("x"), 0o644))
	for name, tmp := range map[string]string{"under a file": filepath.Join(file, "lethe"), "a file": file} {
		t.Run(name, func(t *testing.T) {
			dir, conf := newBucket(t)
			before := bucketFiles(t, dir)
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"lethe-rewriter", "run", conf, "--tmp.dir", tmp, "--nice=false"}, &stdout, &stderr)
			testutil.Equals(t, 1, code, stderr.String())
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			testutil.Equals(t, 1, len(lines), stderr.String())
			testutil.Assert(t, strings.HasPrefix(lines[0], "lethe-rewriter: create --tmp.dir: ") && strings.Contains(lines[0], "not a directory"), lines[0])
			testutil.Equals(t, before, bucketFiles(t, dir))
		})
	}
}

// bucketFiles maps every file of a FILESYSTEM bucket to its content.
func bucketFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	testutil.Ok(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	}))
	return out
}

// TestPlanShowsPending: plan lists the pending tombstones with when each becomes due, its
// deadline and the blocks it will touch, in the table and in JSON, beside the due ones' jobs.
func TestPlanShowsPending(t *testing.T) {
	dir := t.TempDir()
	bkt, err := filesystem.NewBucket(dir)
	testutil.Ok(t, err)
	start := time.Now().Add(-48 * time.Hour).UnixMilli()
	series := userSeries(4)
	var blocks []string
	for i := int64(0); i < 2; i++ {
		id, err := synth.Upload(context.Background(), bkt, t.TempDir(), synth.Block{Series: series, MinTime: start + i*7_200_000, MaxTime: start + (i+1)*7_200_000, Step: 60_000})
		testutil.Ok(t, err)
		blocks = append(blocks, id.String())
	}
	store := tombstones.NewStore(bkt, nil)
	zero, day, week := time.Duration(0), 24*time.Hour, 7*24*time.Hour
	due, err := store.Add(context.Background(), tombstones.Spec{Selectors: []string{`{user_id="0"}`}, UndeleteWindow: &zero})
	testutil.Ok(t, err)
	everywhere, err := store.Add(context.Background(), tombstones.Spec{Selectors: []string{`{user_id="1"}`}, UndeleteWindow: &day, MaxWait: &week})
	testutil.Ok(t, err)
	firstEnd := start + 3_600_000
	inFirst, err := store.Add(context.Background(), tombstones.Spec{Selectors: []string{`{user_id="2"}`}, End: &firstEnd, UndeleteWindow: &day})
	testutil.Ok(t, err)
	conf := "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dir + "}"

	var stdout, stderr bytes.Buffer
	testutil.Equals(t, 0, run(context.Background(), []string{"lethe-rewriter", "plan", conf, "--output", "json"}, &stdout, &stderr), stderr.String())
	var p struct {
		Jobs []struct {
			Block string `json:"block"`
		} `json:"jobs"`
		Due     []string `json:"due"`
		Pending []struct {
			Tombstone string    `json:"tombstone"`
			DueAt     time.Time `json:"due_at"`
			Deadline  time.Time `json:"deadline"`
			Blocks    []string  `json:"blocks"`
		} `json:"pending"`
		Problems []string `json:"problems"`
	}
	testutil.Ok(t, json.Unmarshal(stdout.Bytes(), &p))
	testutil.Equals(t, []string{due.ID.String()}, p.Due)
	testutil.Equals(t, 2, len(p.Jobs))
	testutil.Equals(t, []string{}, p.Problems)
	testutil.Equals(t, 2, len(p.Pending), "%+v", p.Pending)
	byID := map[string]int{p.Pending[0].Tombstone: 0, p.Pending[1].Tombstone: 1}
	e, f := p.Pending[byID[everywhere.ID.String()]], p.Pending[byID[inFirst.ID.String()]]
	testutil.Equals(t, everywhere.ID.String(), e.Tombstone)
	testutil.Assert(t, e.DueAt.Equal(everywhere.UndeleteUntil), "due at %v, want %v", e.DueAt, everywhere.UndeleteUntil)
	testutil.Assert(t, e.Deadline.Equal(everywhere.Deadline), "deadline %v, want %v", e.Deadline, everywhere.Deadline)
	testutil.Equals(t, slices.Sorted(slices.Values(blocks)), e.Blocks)
	testutil.Equals(t, inFirst.ID.String(), f.Tombstone)
	testutil.Equals(t, []string{blocks[0]}, f.Blocks)

	stdout.Reset()
	testutil.Equals(t, 0, run(context.Background(), []string{"lethe-rewriter", "plan", conf}, &stdout, &stderr), stderr.String())
	table := stdout.String()
	testutil.Assert(t, strings.Contains(table, "1 due tombstones, 2 jobs\n"), table)
	testutil.Assert(t, strings.Contains(table, "2 pending tombstones"), table)
	_, pendingTable, ok := strings.Cut(table, "PENDING TOMBSTONE")
	testutil.Assert(t, ok, table)
	stampOf := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	testutil.Assert(t, strings.Contains(pendingTable, inFirst.ID.String()+"  "+stampOf(inFirst.UndeleteUntil)+"  "+stampOf(inFirst.Deadline)+"  "+blocks[0]+"\n"), table)
	lines := strings.Split(pendingTable, "\n")
	found := false
	for i, l := range lines {
		if strings.HasPrefix(l, everywhere.ID.String()) {
			found = true
			testutil.Assert(t, strings.HasPrefix(l, everywhere.ID.String()+"  "+stampOf(everywhere.UndeleteUntil)+"  "+stampOf(everywhere.Deadline)+"  "), l)
			// Its second block is on the next line, under the first.
			testutil.Equals(t, strings.Join(e.Blocks, "\n"), strings.TrimSpace(l[strings.LastIndex(l, " ")+1:])+"\n"+strings.TrimSpace(lines[i+1]))
		}
	}
	testutil.Assert(t, found, "no line for %s: %s", everywhere.ID, table)
}
