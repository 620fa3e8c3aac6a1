package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/thanos-io/objstore/providers/filesystem"

	"github.com/lethe-project/lethe/internal/synth"
	"github.com/lethe-project/lethe/tombstones"
)

// newBucket writes one real block of four users' series into a FILESYSTEM bucket and returns the
// path of a bucket configuration file for it.
func newBucket(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bkt, err := filesystem.NewBucket(dir)
	testutil.Ok(t, err)
	start := time.Now().Add(-4 * time.Hour).UnixMilli()
	var series []labels.Labels
	for u := 0; u < 4; u++ {
		series = append(series, labels.FromStrings("__name__", "x", "user_id", fmt.Sprint(u)))
	}
	_, err = synth.Upload(context.Background(), bkt, t.TempDir(), synth.Block{Series: series, MinTime: start, MaxTime: start + 7_200_000, Step: 60_000})
	testutil.Ok(t, err)
	conf := filepath.Join(t.TempDir(), "bucket.yml")
	testutil.Ok(t, os.WriteFile(conf, []byte("type: FILESYSTEM\nconfig: {directory: "+dir+"}\n"), 0o644))
	return conf
}

func runLethe(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(context.Background(), append([]string{"lethe"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestGlobalFlagsOnEitherSide: the bucket and log flags work before the subcommand, after it and
// after its argument; the command's own flags too.
func TestGlobalFlagsOnEitherSide(t *testing.T) {
	conf := newBucket(t)
	code, stdout, stderr := runLethe("tombstone", "add", "--objstore.config-file="+conf, "--match", `{user_id="1"}`, "--log.level", "debug", "--reason", "r1")
	testutil.Equals(t, 0, code, stderr)
	first := strings.TrimSpace(stdout)
	// --log.level reached the logger: the store logs the new tombstone at info, which the default
	// level (warn) hides.
	testutil.Assert(t, strings.Contains(stderr, "level=INFO"), "no logs at debug level: %s", stderr)

	code, stdout, stderr = runLethe("--log.level=error", "tombstone", "add", "--match", `{user_id="2"}`, "--objstore.config-file", conf)
	testutil.Equals(t, 0, code, stderr)
	second := strings.TrimSpace(stdout)
	testutil.Assert(t, !strings.Contains(stderr, "level="), "logs above error level: %s", stderr)

	code, stdout, stderr = runLethe("tombstone", "cancel", first, "--reason", "wrong user", "--objstore.config-file="+conf, "--author", "bob")
	testutil.Equals(t, 0, code, stderr)
	testutil.Assert(t, strings.HasPrefix(stdout, "cancelled "+first), stdout)

	code, stdout, stderr = runLethe("tombstone", "show", first, "-o", "json", "--objstore.config-file", conf)
	testutil.Equals(t, 0, code, stderr)
	var v tombstones.View
	testutil.Ok(t, json.Unmarshal([]byte(stdout), &v))
	testutil.Equals(t, tombstones.StateCancelled, v.State)
	testutil.Equals(t, "wrong user", v.Cancellation.Reason)
	testutil.Equals(t, "bob", v.Cancellation.Author)

	code, stdout, stderr = runLethe("tombstone", "list", "--state", "pending", "--objstore.config-file="+conf)
	testutil.Equals(t, 0, code, stderr)
	testutil.Assert(t, strings.Contains(stdout, second+"  pending") && !strings.Contains(stdout, first), stdout)
}

// TestUnknownFlagIsOneLine: an unknown flag anywhere is one line on stderr, nothing on stdout and
// exit status 1; so is a flag of one command given to another.
func TestUnknownFlagIsOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"tombstone", "list", "--foo"},
		{"--foo", "tombstone", "list"},
		{"tombstone", "cancel", "01M86065CWNBFDYWAT4K034EY4", "--foo=1"},
		{"tombstone", "add", "--match", "{a=\"b\"}", "--foo"},
	} {
		code, stdout, stderr := runLethe(args...)
		testutil.Equals(t, 1, code, "%q", args)
		testutil.Equals(t, "", stdout, "%q", args)
		testutil.Equals(t, "lethe: flag provided but not defined: -foo\n", stderr, "%q", args)
	}
	code, stdout, stderr := runLethe("tombstone", "list", "--reason", "x")
	testutil.Equals(t, 1, code)
	testutil.Equals(t, "", stdout)
	testutil.Equals(t, "lethe: flag provided but not defined: -reason\n", stderr)
}

// TestHelpListsGlobalFlags: each subcommand's help lists the global flags it accepts.
func TestHelpListsGlobalFlags(t *testing.T) {
	for _, cmd := range []string{"add", "list", "show", "cancel"} {
		code, stdout, stderr := runLethe("tombstone", cmd, "--help")
		testutil.Equals(t, 0, code, stderr)
		_, global, ok := strings.Cut(stdout, "GLOBAL OPTIONS:")
		testutil.Assert(t, ok, "%s: no global options: %s", cmd, stdout)
		for _, f := range []string{"--objstore.config-file value", "--objstore.config value", "--log.level value"} {
			testutil.Assert(t, strings.Contains(global, f), "%s help lacks %s: %s", cmd, f, stdout)
		}
	}
}
