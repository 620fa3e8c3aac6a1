package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// blockStart is where the test blocks begin: 2026-11-01T00:00:00Z.
const blockStart = int64(1793491200000)

// cliBucket is a FILESYSTEM bucket holding two real 2h TSDB blocks with external labels.
type cliBucket struct {
	dir  string
	conf string
}

func newCLIBucket(t *testing.T) cliBucket {
	t.Helper()
	dir := t.TempDir()
	bkt, err := filesystem.NewBucket(dir)
	testutil.Ok(t, err)
	var series []labels.Labels
	for u := 0; u < 20; u++ {
		series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "user_id", fmt.Sprint(u)))
	}
	series = append(series, labels.FromStrings("__name__", "http_requests_total", "job", "api", "token", "s3cr3t-leaked"))
	for i := int64(0); i < 2; i++ {
		_, err := synth.Upload(context.Background(), bkt, t.TempDir(), synth.Block{
			Series:   series,
			MinTime:  blockStart + i*7_200_000,
			MaxTime:  blockStart + (i+1)*7_200_000,
			Step:     60_000,
			External: map[string]string{"cluster": "eu1"},
		})
		testutil.Ok(t, err)
	}
	return cliBucket{dir: dir, conf: "--objstore.config=type: FILESYSTEM\nconfig: {directory: " + dir + "}"}
}

// snapshot returns every object path and its bytes, to prove a failed command wrote nothing.
func (b cliBucket) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	testutil.Ok(t, filepath.WalkDir(b.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		c, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, b.dir)] = string(c)
		return err
	}))
	return out
}

type result struct {
	stdout, stderr string
	code           int
}

func (b cliBucket) run(t *testing.T, args ...string) result {
	t.Helper()
	return runLethe(t, append([]string{b.conf}, args...)...)
}

func runLethe(t *testing.T, args ...string) result {
	t.Helper()
	return runBinary(t, binaries.lethe, time.Minute, []string{"USER=tester"}, args...)
}

// runBinary runs a binary (lethe's or a third party's) in a fresh directory, with env added to
// the environment, and returns its output and exit code; one that outlives timeout fails the test.
func runBinary(t *testing.T, bin string, timeout time.Duration, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s did not finish within %v; stderr:\n%s", filepath.Base(bin), strings.ReplaceAll(strings.Join(args, " "), "\n", " "), timeout, stderr.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		testutil.Ok(t, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

type listing struct {
	Tombstones []tombstones.View   `json:"tombstones"`
	Broken     []tombstones.Broken `json:"broken"`
}

func TestCLIRoundTrip(t *testing.T) {
	b := newCLIBucket(t)

	add := b.run(t, "tombstone", "add", "--match", `{user_id="7"}`, "--match", `{user_id="8",cluster="eu1"}`,
		"--start", "2026-11-01T00:30:00Z", "--end", fmt.Sprint(blockStart/1000+3*3600),
		"--reason", "GDPR #1", "--author", "alice")
	testutil.Equals(t, 0, add.code, add.stderr)
	id := strings.TrimSpace(add.stdout)
	testutil.Equals(t, 26, len(id), "stdout must hold only the id: %q", add.stdout)
	// Two users in two blocks each, counted once per block.
	testutil.Assert(t, strings.Contains(add.stderr, "matches 4 series"), add.stderr)

	var l listing
	list := b.run(t, "tombstone", "list", "--output", "json")
	testutil.Equals(t, 0, list.code, list.stderr)
	testutil.Ok(t, json.Unmarshal([]byte(list.stdout), &l))
	testutil.Equals(t, 1, len(l.Tombstones))
	v := l.Tombstones[0]
	testutil.Equals(t, id, v.ID)
	testutil.Equals(t, tombstones.StatePending, v.State)
	testutil.Equals(t, []string{`{user_id="7"}`, `{user_id="8", cluster="eu1"}`}, v.Matchers)
	testutil.Equals(t, blockStart+1_800_000, v.StartMillis)
	testutil.Equals(t, blockStart+3*3_600_000, v.EndMillis)
	testutil.Equals(t, "alice", v.Author)
	testutil.Equals(t, 24*time.Hour, v.UndeleteUntil.Sub(v.CreatedAt))
	testutil.Equals(t, 14*24*time.Hour, v.Deadline.Sub(v.CreatedAt))

	table := b.run(t, "tombstone", "list")
	testutil.Equals(t, 0, table.code, table.stderr)
	testutil.Assert(t, strings.HasPrefix(table.stdout, "ID "), table.stdout)
	testutil.Assert(t, strings.Contains(table.stdout, id+"  pending"), table.stdout)

	show := b.run(t, "tombstone", "show", id, "--output", "json")
	testutil.Equals(t, 0, show.code, show.stderr)
	var sv tombstones.View
	testutil.Ok(t, json.Unmarshal([]byte(show.stdout), &sv))
	testutil.Equals(t, v.ID, sv.ID)
	testutil.Equals(t, v.Matchers, sv.Matchers)

	before := b.snapshot(t)
	cancel := b.run(t, "tombstone", "cancel", id, "--reason", "wrong user")
	testutil.Equals(t, 0, cancel.code, cancel.stderr)
	after := b.snapshot(t)
	// Append-only: the tombstone object is unchanged and exactly one object was added.
	testutil.Equals(t, len(before)+1, len(after))
	for k, v := range before {
		testutil.Equals(t, v, after[k], "object %s changed", k)
	}

	show = b.run(t, "tombstone", "show", id)
	testutil.Equals(t, 0, show.code, show.stderr)
	testutil.Assert(t, strings.Contains(show.stdout, "state:           cancelled"), show.stdout)
	testutil.Assert(t, strings.Contains(show.stdout, "wrong user"), show.stdout)

	again := b.run(t, "tombstone", "cancel", id)
	testutil.Equals(t, 1, again.code)
	testutil.Assert(t, strings.Contains(again.stderr, "already cancelled"), again.stderr)
}

func TestCLIDryRunWritesNothing(t *testing.T) {
	b := newCLIBucket(t)
	before := b.snapshot(t)
	r := b.run(t, "tombstone", "add", "--match", `{token="s3cr3t-leaked"}`, "--redact", "--dry-run", "--output", "json")
	testutil.Equals(t, 0, r.code, r.stderr)
	testutil.Equals(t, before, b.snapshot(t))
	var v tombstones.View
	testutil.Ok(t, json.Unmarshal([]byte(r.stdout), &v))
	testutil.Equals(t, []string{"{token=<redacted>}"}, v.Matchers)
	testutil.Assert(t, strings.Contains(r.stderr, "matches 2 series"), r.stderr)
	testutil.Assert(t, !strings.Contains(r.stdout+r.stderr, "s3cr3t"), "dry run printed the secret: %s %s", r.stdout, r.stderr)
}

func TestCLIRedactKeepsSecretOutOfBucket(t *testing.T) {
	b := newCLIBucket(t)
	keyFile := filepath.Join(t.TempDir(), "key")
	testutil.Ok(t, os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef"), 0o600))
	r := b.run(t, "tombstone", "add", "--match", `{__name__="http_requests_total",token="s3cr3t-leaked"}`, "--redact", "--redact.key-file", keyFile)
	testutil.Equals(t, 0, r.code, r.stderr)
	r2 := b.run(t, "tombstone", "add", "--match", `{token="s3cr3t-leaked"}`, "--redact")
	testutil.Equals(t, 0, r2.code, r2.stderr)

	for name, content := range b.snapshot(t) {
		if strings.Contains(name, "tombstones") {
			testutil.Assert(t, !strings.Contains(content, "s3cr3t"), "%s holds the secret", name)
		}
	}
	list := b.run(t, "tombstone", "list", "--output", "json")
	testutil.Equals(t, 0, list.code, list.stderr)
	testutil.Assert(t, !strings.Contains(list.stdout, "s3cr3t"), list.stdout)
	testutil.Assert(t, strings.Contains(list.stdout, `token=\u003credacted\u003e`), list.stdout)
	// The metric name stays readable.
	testutil.Assert(t, strings.Contains(list.stdout, `__name__=\"http_requests_total\"`), list.stdout)
}

func TestCLIBadInputChangesNothing(t *testing.T) {
	b := newCLIBucket(t)
	ok := b.run(t, "tombstone", "add", "--match", `{user_id="1"}`, "--undelete-window", "0s")
	testutil.Equals(t, 0, ok.code, ok.stderr)
	dueID := strings.TrimSpace(ok.stdout)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unparsable selector", []string{"tombstone", "add", "--match", `foo{`}, "parse selector"},
		{"empty selector", []string{"tombstone", "add", "--match", ``}, "empty selector"},
		{"selector matching empty", []string{"tombstone", "add", "--match", `{job=~".*"}`}, "does not match the empty string"},
		{"every series", []string{"tombstone", "add", "--match", `{__name__=~".+"}`}, "matches every series"},
		{"no match", []string{"tombstone", "add", "--match", `{user_id="nobody"}`}, "match no stored series"},
		{"no match in time", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--end", "2020-01-01T00:00:00Z"}, "match no stored series"},
		{"start after end", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--start", "1793500000", "--end", "1793490000"}, "is after end"},
		{"bad time", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--start", "yesterday"}, "cannot parse"},
		{"negative window", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--undelete-window", "-1h"}, "negative"},
		{"max wait below window", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--max-wait", "1h"}, "shorter than the undelete window"},
		{"redact regex", []string{"tombstone", "add", "--match", `{token=~"s3.*"}`, "--redact"}, "only equality matchers"},
		{"short key file", []string{"tombstone", "add", "--match", `{user_id="1"}`, "--redact", "--redact.key-file", "/dev/null"}, "at least 16 bytes"},
		{"no selector", []string{"tombstone", "add"}, "match"},
		{"unknown id", []string{"tombstone", "show", "01M86065CWNBFDYWAT4K034EY4"}, "no tombstone with id"},
		{"not an id", []string{"tombstone", "cancel", "banana"}, "not a tombstone id"},
		{"cancel after window", []string{"tombstone", "cancel", dueID}, "can no longer be cancelled"},
		{"bad output", []string{"tombstone", "list", "--output", "yaml"}, "want table or json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.snapshot(t)
			r := b.run(t, tc.args...)
			testutil.Equals(t, 1, r.code, "stdout: %s stderr: %s", r.stdout, r.stderr)
			testutil.Equals(t, "", r.stdout)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			last := lines[len(lines)-1]
			testutil.Assert(t, strings.HasPrefix(last, "lethe: ") || strings.Contains(last, "Required flag"), "stderr: %s", r.stderr)
			testutil.Assert(t, strings.Contains(r.stderr, tc.want), "want %q in stderr: %s", tc.want, r.stderr)
			testutil.Equals(t, before, b.snapshot(t))
		})
	}
}

func TestCLIBadBucket(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no config", []string{"tombstone", "list"}, "no bucket configured"},
		{"unknown type", []string{"--objstore.config=type: NOPE", "tombstone", "list"}, "object-storage configuration"},
		{"bad yaml", []string{"--objstore.config=type: [", "tombstone", "list"}, "object-storage configuration"},
		{"missing file", []string{"--objstore.config-file=/nonexistent/bucket.yml", "tombstone", "list"}, "read object-storage configuration"},
		{"unreachable s3", []string{"--objstore.config=type: S3\nconfig: {bucket: b, endpoint: 127.0.0.1:1, insecure: true, access_key: a, secret_key: b}", "tombstone", "list"}, "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runLethe(t, tc.args...)
			testutil.Equals(t, 1, r.code, r.stderr)
			testutil.Assert(t, strings.Contains(r.stderr, tc.want), "want %q in stderr: %s", tc.want, r.stderr)
		})
	}
}

func TestCLIConcurrentAddsAllLand(t *testing.T) {
	b := newCLIBucket(t)
	const n = 6
	var wg sync.WaitGroup
	ids := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := b.run(t, "tombstone", "add", "--match", fmt.Sprintf(`{user_id="%d"}`, i))
			if r.code == 0 {
				ids[i] = strings.TrimSpace(r.stdout)
			}
		}()
	}
	wg.Wait()
	var l listing
	list := b.run(t, "tombstone", "list", "--output", "json")
	testutil.Ok(t, json.Unmarshal([]byte(list.stdout), &l))
	var got []string
	for _, v := range l.Tombstones {
		got = append(got, v.ID)
	}
	sort.Strings(ids)
	testutil.Equals(t, ids, got)
	testutil.Equals(t, n, len(got))
}

func TestCLICountsThroughQueryAPI(t *testing.T) {
	b := newCLIBucket(t)
	var gotMatch []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		testutil.Ok(t, r.ParseForm())
		if r.URL.Path != "/api/v1/series" {
			http.NotFound(w, r)
			return
		}
		gotMatch = r.Form["match[]"]
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"status":"success","data":[{"__name__":"up","job":"edge"},{"__name__":"up","job":"edge","instance":"b"}]}`)
	}))
	defer srv.Close()
	r := b.run(t, "tombstone", "add", "--match", `up{job="edge"}`, "--query.url", srv.URL, "--dry-run")
	testutil.Equals(t, 0, r.code, r.stderr)
	testutil.Equals(t, []string{`{__name__="up", job="edge"}`}, gotMatch)
	testutil.Assert(t, strings.Contains(r.stderr, "matches 2 series"), r.stderr)

	down := b.run(t, "tombstone", "add", "--match", `up{job="edge"}`, "--query.url", "http://127.0.0.1:1")
	testutil.Equals(t, 1, down.code)
	testutil.Assert(t, strings.Contains(down.stderr, "count series through"), down.stderr)
}

func TestCLIHelpExplainsEveryFlag(t *testing.T) {
	r := runLethe(t, "tombstone", "add", "--help")
	testutil.Equals(t, 0, r.code, r.stderr)
	for _, f := range []string{"--match", "--start", "--end", "--undelete-window", "--max-wait", "--reason", "--author", "--redact", "--redact.key-file", "--query.url", "--dry-run", "--force", "--output"} {
		testutil.Assert(t, strings.Contains(r.stdout, f+" "), "help lacks %s: %s", f, r.stdout)
	}
}

// confFile writes the bucket's configuration into a file, for --objstore.config-file.
func (b cliBucket) confFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "bucket.yml")
	testutil.Ok(t, os.WriteFile(f, []byte("type: FILESYSTEM\nconfig:\n  directory: "+strconv.Quote(b.dir)+"\n"), 0o644))
	return f
}

// TestCLIContractCommandLines runs CONTRACT.md's command lines as written there, the global
// --objstore.config-file after the subcommand (and after the id), against the built binaries and
// a FILESYSTEM bucket of real blocks:
//
//	lethe tombstone add   --match SELECTOR [--match ...] [--start T] [--end T]
//	                      [--undelete-window 24h] [--max-wait 336h] [--reason TEXT] [--author NAME]
//	                      [--dry-run] [--force]
//	lethe tombstone list  [--output table|json]
//	lethe tombstone show  ID
//	lethe tombstone cancel ID [--reason TEXT]
//	lethe-rewriter plan --objstore.config-file FILE [--output table|json]
//	lethe-rewriter run  --objstore.config-file FILE [--threshold 0.05] [--batch.series 10000]
//	                    [--rate.series-per-second 0] [--rate.bytes-per-second 0] [--concurrency 1]
//	                    [--time-budget 0] [--tmp.dir DIR] [--dry-run]
func TestCLIContractCommandLines(t *testing.T) {
	b := newCLIBucket(t)
	file := b.confFile(t)
	ok := func(r result, what string) result {
		t.Helper()
		testutil.Equals(t, 0, r.code, "%s: stdout %s stderr %s", what, r.stdout, r.stderr)
		return r
	}
	end := fmt.Sprint(blockStart/1000 + 4*3600)

	before := b.snapshot(t)
	dry := ok(runLethe(t, "tombstone", "add", "--objstore.config-file="+file, "--match", `{user_id="3"}`, "--match", `{user_id="4"}`,
		"--start", "2026-11-01T00:00:00Z", "--end", end, "--undelete-window", "24h", "--max-wait", "336h",
		"--reason", "GDPR #3", "--author", "alice", "--dry-run", "--force", "--output", "json"), "add --dry-run")
	testutil.Equals(t, before, b.snapshot(t), "a dry run wrote to the bucket")
	var dv tombstones.View
	testutil.Ok(t, json.Unmarshal([]byte(dry.stdout), &dv))
	testutil.Equals(t, []string{`{user_id="3"}`, `{user_id="4"}`}, dv.Matchers)
	testutil.Equals(t, "GDPR #3", dv.Reason)
	testutil.Equals(t, "alice", dv.Author)

	pending := strings.TrimSpace(ok(runLethe(t, "tombstone", "add", "--objstore.config-file", file, "--match", `{user_id="3"}`, "--match", `{user_id="4"}`,
		"--start", "2026-11-01T00:00:00Z", "--end", end, "--undelete-window", "24h", "--max-wait", "336h",
		"--reason", "GDPR #3", "--author", "alice"), "add").stdout)
	// Only in the first block: 00:00 to 01:00.
	firstHour := strings.TrimSpace(ok(runLethe(t, "tombstone", "add", "--match", `{user_id="5"}`, "--end", fmt.Sprint(blockStart/1000+3600),
		"--objstore.config-file", file, "--log.level", "debug"), "add in the first block").stdout)
	due := strings.TrimSpace(ok(runLethe(t, "--log.level=warn", "tombstone", "add", "--match", `{user_id="6"}`, "--undelete-window", "0s", "--max-wait", "0s",
		"--objstore.config-file="+file), "add due").stdout)
	cancelled := strings.TrimSpace(ok(runLethe(t, "tombstone", "add", "--match", `{user_id="7"}`, "--objstore.config-file", file), "add to cancel").stdout)

	var l listing
	testutil.Ok(t, json.Unmarshal([]byte(ok(runLethe(t, "tombstone", "list", "--output", "json", "--objstore.config-file", file), "list json").stdout), &l))
	testutil.Equals(t, 4, len(l.Tombstones))
	table := ok(runLethe(t, "tombstone", "list", "--objstore.config-file", file, "--output", "table"), "list table").stdout
	testutil.Assert(t, strings.Contains(table, pending+"  pending") && strings.Contains(table, due+"  due"), table)

	show := ok(runLethe(t, "tombstone", "show", pending, "--objstore.config-file", file), "show").stdout
	testutil.Assert(t, strings.Contains(show, "id:              "+pending) && strings.Contains(show, "reason:          GDPR #3"), show)

	ok(runLethe(t, "tombstone", "cancel", cancelled, "--reason", "wrong user", "--objstore.config-file", file), "cancel")
	show = ok(runLethe(t, "tombstone", "show", cancelled, "--objstore.config-file="+file), "show cancelled").stdout
	testutil.Assert(t, strings.Contains(show, "state:           cancelled") && strings.Contains(show, "wrong user"), show)

	// The plan: jobs for the due tombstone, and the pending ones with the blocks they will touch.
	var p rwPlan
	testutil.Ok(t, json.Unmarshal([]byte(ok(runBinary(t, binaries.rewriter, 2*time.Minute, nil, "plan", "--objstore.config-file", file, "--output", "json"), "plan json").stdout), &p))
	testutil.Equals(t, []string{due}, p.Due)
	testutil.Equals(t, 2, len(p.Jobs))
	blocks := []string{p.Jobs[0].Block, p.Jobs[1].Block}
	sort.Strings(blocks)
	got := map[string][]string{}
	for _, pt := range p.Pending {
		got[pt.Tombstone] = pt.Blocks
	}
	testutil.Equals(t, map[string][]string{pending: blocks, firstHour: {blocks[0]}}, got)
	for _, v := range l.Tombstones {
		for _, pt := range p.Pending {
			if pt.Tombstone == v.ID {
				testutil.Assert(t, pt.DueAt.Equal(v.UndeleteUntil) && pt.Deadline.Equal(v.Deadline), "%s: due at %v deadline %v, want %v %v", v.ID, pt.DueAt, pt.Deadline, v.UndeleteUntil, v.Deadline)
			}
		}
	}
	planTable := ok(runBinary(t, binaries.rewriter, 2*time.Minute, nil, "plan", "--objstore.config-file", file, "--output", "table"), "plan table").stdout
	testutil.Assert(t, strings.Contains(planTable, "1 due tombstones, 2 jobs\n"), planTable)
	testutil.Assert(t, strings.Contains(planTable, "\n2 pending tombstones"), planTable)
	stamp := func(ts time.Time) string { return ts.UTC().Format(time.RFC3339) }
	for _, pt := range p.Pending {
		line := pt.Tombstone + "  " + stamp(pt.DueAt) + "  " + stamp(pt.Deadline) + "  " + pt.Blocks[0] + "\n"
		testutil.Assert(t, strings.Contains(planTable, line), "plan lacks %q: %s", line, planTable)
	}

	tmp := filepath.Join(t.TempDir(), "var", "tmp", "lethe")
	runArgs := []string{"run", "--objstore.config-file", file, "--threshold", "0.05", "--batch.series", "10000",
		"--rate.series-per-second", "0", "--rate.bytes-per-second", "0", "--concurrency", "1",
		"--time-budget", "0", "--tmp.dir", tmp}
	before = b.snapshot(t)
	ok(runBinary(t, binaries.rewriter, 2*time.Minute, nil, append(runArgs, "--dry-run")...), "run --dry-run")
	testutil.Equals(t, before, b.snapshot(t), "a dry run wrote to the bucket")
	r := ok(runBinary(t, binaries.rewriter, 2*time.Minute, nil, runArgs...), "run")
	testutil.Assert(t, strings.Contains(r.stderr, `"msg":"run done","rewritten":2`), r.stderr)
	marks := 0
	for name := range b.snapshot(t) {
		if strings.HasSuffix(name, "/deletion-mark.json") {
			marks++
		}
	}
	testutil.Equals(t, 2, marks, "the run did not replace both blocks")
	planTable = ok(runBinary(t, binaries.rewriter, 2*time.Minute, nil, "plan", "--output", "table", "--objstore.config-file", file), "plan after the run").stdout
	testutil.Assert(t, strings.Contains(planTable, "1 due tombstones, 0 jobs\n"), planTable)
	fi, err := os.Stat(tmp)
	testutil.Ok(t, err)
	testutil.Assert(t, fi.IsDir(), "--tmp.dir was not created")
}

// TestCLIUnknownFlagIsOneLine: an unknown flag, before or after the subcommand, is one line on
// stderr and exit status 1 in every binary, never the help; so is a misspelt command.
func TestCLIUnknownFlagIsOneLine(t *testing.T) {
	for _, tc := range []struct {
		bin  string
		args []string
		want string
	}{
		{binaries.lethe, []string{"tombstone", "add", "--match", `{a="b"}`, "--foo"}, "lethe: flag provided but not defined: -foo"},
		{binaries.lethe, []string{"--foo", "tombstone", "list"}, "lethe: flag provided but not defined: -foo"},
		{binaries.lethe, []string{"tombstone", "cancel", "01M86065CWNBFDYWAT4K034EY4", "--foo=x"}, "lethe: flag provided but not defined: -foo"},
		{binaries.lethe, []string{"tombstone", "list", "--output"}, "lethe: flag needs an argument: -output"},
		{binaries.lethe, []string{"tombstones", "list"}, `lethe: unknown command "tombstones": want tombstone`},
		{binaries.rewriter, []string{"plan", "--foo"}, "lethe-rewriter: flag provided but not defined: -foo"},
		{binaries.rewriter, []string{"--foo", "run"}, "lethe-rewriter: flag provided but not defined: -foo"},
		{binaries.rewriter, []string{"run", "--batch.series", "many"}, `lethe-rewriter: invalid value "many" for flag -batch.series: parse error`},
		{binaries.proxy, []string{"--foo"}, "lethe-proxy: flag provided but not defined: -foo"},
		{binaries.proxy, []string{"--web.listen-address=127.0.0.1:0", "serve"}, `lethe-proxy: unexpected argument "serve": lethe-proxy takes only flags`},
	} {
		r := runBinary(t, tc.bin, time.Minute, nil, tc.args...)
		testutil.Equals(t, 1, r.code, "%s %q", filepath.Base(tc.bin), tc.args)
		testutil.Equals(t, "", r.stdout, "%s %q", filepath.Base(tc.bin), tc.args)
		testutil.Equals(t, tc.want+"\n", r.stderr, "%s %q", filepath.Base(tc.bin), tc.args)
	}
}

// TestCLIHelpListsGlobalFlags: the help of every subcommand lists the global flags it accepts.
func TestCLIHelpListsGlobalFlags(t *testing.T) {
	for _, tc := range []struct {
		bin    string
		args   []string
		global []string
	}{
		{binaries.lethe, []string{"tombstone", "add"}, []string{"--objstore.config-file", "--objstore.config", "--log.level"}},
		{binaries.lethe, []string{"tombstone", "list"}, []string{"--objstore.config-file", "--objstore.config", "--log.level"}},
		{binaries.lethe, []string{"tombstone", "show"}, []string{"--objstore.config-file", "--objstore.config", "--log.level"}},
		{binaries.lethe, []string{"tombstone", "cancel"}, []string{"--objstore.config-file", "--objstore.config", "--log.level"}},
		{binaries.rewriter, []string{"plan"}, []string{"--objstore.config-file", "--objstore.config", "--threshold", "--redact.key-file", "--log.level"}},
		{binaries.rewriter, []string{"run"}, []string{"--objstore.config-file", "--objstore.config", "--threshold", "--redact.key-file", "--log.level"}},
	} {
		r := runBinary(t, tc.bin, time.Minute, nil, append(tc.args, "--help")...)
		testutil.Equals(t, 0, r.code, r.stderr)
		_, global, found := strings.Cut(r.stdout, "GLOBAL OPTIONS:")
		testutil.Assert(t, found, "%q: no global options: %s", tc.args, r.stdout)
		for _, f := range tc.global {
			testutil.Assert(t, strings.Contains(global, "   "+f+" value "), "%q help lacks %s: %s", tc.args, f, r.stdout)
		}
	}
}

// TestCLIRewriterTmpDir: a --tmp.dir that cannot be created is one error at start (exit 1) that
// changes nothing, never bad blocks (exit 4).
func TestCLIRewriterTmpDir(t *testing.T) {
	b := newCLIBucket(t)
	file := b.confFile(t)
	r := runLethe(t, "tombstone", "add", "--match", `{user_id="1"}`, "--undelete-window", "0s", "--max-wait", "0s", "--objstore.config-file", file)
	testutil.Equals(t, 0, r.code, r.stderr)
	notDir := filepath.Join(t.TempDir(), "file")
	testutil.Ok(t, os.WriteFile(notDir, []byte("x"), 0o644))
	for _, tmp := range []string{filepath.Join(notDir, "lethe"), notDir} {
		before := b.snapshot(t)
		r := runBinary(t, binaries.rewriter, 2*time.Minute, nil, "run", "--objstore.config-file", file, "--tmp.dir", tmp)
		testutil.Equals(t, 1, r.code, r.stderr)
		testutil.Equals(t, 1, len(strings.Split(strings.TrimSpace(r.stderr), "\n")), r.stderr)
		testutil.Assert(t, strings.HasPrefix(r.stderr, "lethe-rewriter: create --tmp.dir: ") && strings.Contains(r.stderr, "not a directory"), r.stderr)
		testutil.Equals(t, before, b.snapshot(t))
	}
}

// TestCLIProxyFlagsInEitherOrder: lethe-proxy, started as CONTRACT.md writes it
// (lethe-proxy --objstore.config-file FILE [--web.listen-address :9095]) with its flags in either
// order, answers /-/ready and serves the bucket's blocks with the tombstoned series masked.
func TestCLIProxyFlagsInEitherOrder(t *testing.T) {
	b := newCLIBucket(t)
	file := b.confFile(t)
	r := runLethe(t, "tombstone", "add", "--match", `{user_id="1"}`, "--objstore.config-file", file)
	testutil.Equals(t, 0, r.code, r.stderr)
	for i, order := range [][]string{
		{"--objstore.config-file", file, "--web.listen-address", "ADDR", "--log.level", "warn"},
		{"--log.level=warn", "--web.listen-address=ADDR", "--objstore.config-file=" + file},
	} {
		var (
			s    *server
			dir  string
			args []string
		)
		// A free port can be taken by someone else between our probe and the proxy's bind: retry.
		for attempt := 0; s == nil && attempt < 3; attempt++ {
			dir = t.TempDir()
			port := freePort(t)
			args = args[:0]
			for _, a := range order {
				args = append(args, strings.ReplaceAll(a, "ADDR", "127.0.0.1:"+strconv.Itoa(port)))
			}
			var bindFailed bool
			s, bindFailed = launchServer(t, serverSpec{
				name: "lethe-proxy", bin: binaries.proxy, dir: dir, port: port, args: args,
				logFile:      filepath.Join(dir, fmt.Sprintf("lethe-proxy-%d.log", i)),
				readyTimeout: proxyReadyTimeout, stopTimeout: proxyStopTimeout,
				ready: func(s *server) bool {
					resp, err := s.client.Get(s.URL + "/-/ready")
					if err != nil {
						return false
					}
					resp.Body.Close()
					return resp.StatusCode == http.StatusOK
				},
			})
			if !bindFailed {
				break
			}
		}
		testutil.Assert(t, s != nil, "lethe-proxy %q did not start", args)
		resp, err := s.client.Get(s.URL + fmt.Sprintf("/api/v1/label/user_id/values?start=%d&end=%d", blockStart/1000, blockStart/1000+4*3600))
		testutil.Ok(t, err)
		var values struct {
			Status string   `json:"status"`
			Data   []string `json:"data"`
		}
		testutil.Ok(t, json.NewDecoder(resp.Body).Decode(&values))
		resp.Body.Close()
		testutil.Equals(t, "success", values.Status)
		testutil.Equals(t, 19, len(values.Data), "%v", values.Data)
		testutil.Assert(t, !slices.Contains(values.Data, "1"), "the tombstoned user shows: %v", values.Data)
		// The data dir defaults to ./data/proxy in the working directory.
		_, err = os.Stat(filepath.Join(dir, "data", "proxy"))
		testutil.Ok(t, err)
	}
}
