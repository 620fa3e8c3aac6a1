package e2e

// Helpers of TestRewriterKillRounds (rewriter_kill_test.go): lethe-rewriter processes started in
// their own process group and killed with SIGKILL at a chosen moment, and the invariants a bucket
// must keep whatever was killed when: between the waves of workers (nothing lost, nothing
// invented, every deletion mark backed by a whole, verified replacement) and after a clean run
// (exactly the samples the tombstones leave).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
	"github.com/oklog/ulid/v2"

	"github.com/lethe-project/lethe/block"
)

// killProcTimeout bounds one rewriter process of a wave: one still running then is killed and
// fails the test.
const killProcTimeout = time.Minute

// killPlan is when a worker is killed: killAfter its start (0: not by time), or killDelay after
// it first logs the message killOn (a debug log line: the phases of a job), whichever is first.
type killPlan struct {
	killAfter time.Duration
	killOn    string
	killDelay time.Duration
}

func (k killPlan) String() string {
	switch {
	case k.killOn != "":
		return fmt.Sprintf("%v after %q", k.killDelay, k.killOn)
	case k.killAfter > 0:
		return k.killAfter.Round(time.Millisecond).String()
	}
	return "never"
}

// killProc is one lethe-rewriter process of a wave.
type killProc struct {
	name   string
	args   []string
	plan   killPlan
	cmd    *exec.Cmd
	stderr killLog
	done   chan struct{}

	mu       sync.Mutex
	ran      time.Duration // from the start to the exit
	exited   bool
	killed   bool // the SIGKILL was sent while the process ran
	timedOut bool
}

// killLog is a worker's stderr: kept whole, and watched for the line that triggers its kill.
type killLog struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	line    []byte
	watch   string // `"msg":"<killOn>"`
	trigger chan struct{}
}

func (l *killLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(b)
	if l.watch == "" {
		return len(b), nil
	}
	l.line = append(l.line, b...)
	for {
		i := bytes.IndexByte(l.line, '\n')
		if i < 0 {
			break
		}
		if bytes.Contains(l.line[:i], []byte(l.watch)) {
			close(l.trigger)
			l.watch, l.line = "", nil
			break
		}
		l.line = l.line[i+1:]
	}
	return len(b), nil
}

func (l *killLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// killStart starts `lethe-rewriter run` on the bucket in a new process group, whose whole group
// gets SIGKILL as plan says unless it has exited by then.
func killStart(t *testing.T, b cliBucket, name string, args []string, plan killPlan) *killProc {
	t.Helper()
	full := append([]string{b.conf, "run", "--tmp.dir", t.TempDir()}, args...)
	p := &killProc{name: name, args: args, plan: plan, done: make(chan struct{})}
	p.stderr.trigger = make(chan struct{})
	if plan.killOn != "" {
		p.stderr.watch = `"msg":"` + plan.killOn + `"`
	}
	p.cmd = exec.Command(binaries.rewriter, full...)
	p.cmd.Dir = t.TempDir()
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	testutil.Ok(t, p.cmd.Start(), "start %s", name)
	began := time.Now()
	go func() {
		_ = p.cmd.Wait() // The exit status is read from ProcessState.
		p.mu.Lock()
		p.exited = true
		p.ran = time.Since(began)
		p.mu.Unlock()
		close(p.done)
	}()
	go func() {
		kill := time.NewTimer(killProcTimeout)
		if plan.killAfter > 0 {
			kill.Reset(plan.killAfter)
		}
		defer kill.Stop()
		timedOut := false
		select {
		case <-p.done:
			return
		case <-kill.C:
			timedOut = plan.killAfter == 0
		case <-p.stderr.trigger:
			time.Sleep(plan.killDelay)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.exited {
			return
		}
		p.killed, p.timedOut = !timedOut, timedOut
		// The negative pid is the process group: the rewriter and anything it started.
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}()
	return p
}

// wait waits for the process (bounded by killProcTimeout and the kill above) and returns its
// exit code, -1 for a process ended by a signal.
func (p *killProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(killProcTimeout + 10*time.Second):
		t.Fatalf("%s: not reaped %v after its start", p.name, killProcTimeout+10*time.Second)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timedOut {
		t.Errorf("%s %v ran longer than %v; killed. stderr:\n%s", p.name, p.args, killProcTimeout, clip(p.stderr.String(), 4000))
	}
	return p.cmd.ProcessState.ExitCode()
}

// duration is how long the process ran.
func (p *killProc) duration() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ran
}

// wasKilled reports whether the SIGKILL reached the process while it ran.
func (p *killProc) wasKilled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killed
}

// killCrashMarkers are what a Go program writes when it dies of a bug rather than a signal.
var killCrashMarkers = []string{"panic:", "fatal error:", "WARNING: DATA RACE", "goroutine 1 ["}

// killCheckNoCrash fails the test if the process died of a Go panic or runtime error.
func killCheckNoCrash(t *testing.T, p *killProc) {
	t.Helper()
	for _, m := range killCrashMarkers {
		if strings.Contains(p.stderr.String(), m) {
			t.Errorf("%s %v crashed (%q):\n%s", p.name, p.args, m, clip(p.stderr.String(), 6000))
			return
		}
	}
}

// killTombstone is a tombstone of a round: its deletion, and whether it is cancelled.
type killTombstone struct {
	id        string
	del       batteryDeletion
	cancelled bool
}

// killWorld is what a round's checks compare the bucket with.
type killWorld struct {
	bucket   cliBucket
	ext      map[string]string
	original rwSamples // every sample of the blocks uploaded at the start
	tombs    map[string]*killTombstone
}

// liveDeletions are the deletions of the tombstones not cancelled: what may be missing.
func (w *killWorld) liveDeletions() []batteryDeletion {
	var out []batteryDeletion
	for _, id := range slices.Sorted(maps.Keys(w.tombs)) {
		if tb := w.tombs[id]; !tb.cancelled {
			out = append(out, tb.del)
		}
	}
	return out
}

// killMarkStats counts what the deletion-mark check found.
type killMarkStats struct {
	replaced, nothing, withdrawn, undecodable, links int
	// metaCut counts block folders whose meta.json was cut short.
	metaCut int
}

// killCheckWave checks the bucket a wave of workers left, some of them killed at any moment:
//   - every sample that no tombstone (pending, due or applied; not cancelled) covers is readable,
//     with its value, from the live blocks;
//   - no live sample is one that was never written;
//   - every live block is complete (killCheckBlocksComplete) and no two overlap unless Thanos'
//     deduplication rule covers one with the other;
//   - every deletion mark names a replacement that is complete, rewritten from the marked block,
//     applied only tombstones that are not cancelled, and holds exactly the marked block's
//     samples minus those tombstones' (killCheckMarks).
//
// Partial uploads (folders without meta.json, or with a meta.json cut short: FILESYSTEM uploads
// are not atomic) and deletion marks cut short by a kill are allowed between waves. It returns the state it read.
func killCheckWave(t *testing.T, w *killWorld) (rwState, killMarkStats) {
	t.Helper()
	st := rwReadState(t, w.bucket)
	floor := rwExpectedAfter(t, w.original, w.liveDeletions(), w.ext)
	missing := floor.notIn(st.samples)
	if n := missing.count(); n > 0 {
		t.Errorf("%d samples no live tombstone covers are missing from the live blocks (live %v, marked %v): %s",
			n, st.liveIDs(), st.markedIDs(), rwDiffSamples(missing, rwSamples{}))
	}
	extra := st.samples.notIn(w.original)
	if n := extra.count(); n > 0 {
		t.Errorf("%d live samples were never written: %s", n, rwDiffSamples(rwSamples{}, extra))
	}
	cut := killCheckBlocksComplete(t, w.bucket)
	rwCheckNoUncoveredOverlap(t, st.listing)
	ms := killCheckMarks(t, w, st, true)
	ms.metaCut = len(cut)
	return st, ms
}

// killCutMetas returns the block folders whose meta.json does not decode: on a FILESYSTEM bucket,
// whose uploads are not atomic, a worker killed while writing it leaves it cut short.
func killCutMetas(t *testing.T, b cliBucket) []string {
	t.Helper()
	var out []string
	rwEachBlockMeta(t, b, func(name string, raw []byte) {
		if _, err := block.DecodeMeta(raw); err != nil {
			out = append(out, name)
		}
	})
	return out
}

// killCheckBlocksComplete is rwCheckBlocksComplete for a bucket that killed workers may have left
// meta.json files cut short in: those folders, returned, are partial uploads, not blocks.
func killCheckBlocksComplete(t *testing.T, b cliBucket) []string {
	t.Helper()
	cut := killCutMetas(t, b)
	rwEachBlockMeta(t, b, func(name string, raw []byte) {
		if slices.Contains(cut, name) {
			return
		}
		meta, err := block.DecodeMeta(raw)
		testutil.Ok(t, err, "block %s: meta.json", name)
		testutil.Ok(t, killComplete(filepath.Join(b.dir, name), meta), "block %s has meta.json but is not complete", name)
	})
	return cut
}

// killCheckFinal checks the bucket after the clean run: exactly the samples the tombstones that
// are not cancelled leave, each once; no overlap Thanos would not deduplicate; no partial upload
// or upload record left; every block complete and every mark whole and verified.
func killCheckFinal(t *testing.T, w *killWorld) rwState {
	t.Helper()
	st := rwReadState(t, w.bucket)
	want := rwExpectedAfter(t, w.original, w.liveDeletions(), w.ext)
	if d := rwDiffSamples(want, st.samples); d != "" {
		t.Errorf("after the clean run, the live blocks (%v; marked %v) differ from the deletions' oracle: %s", st.liveIDs(), st.markedIDs(), d)
	}
	testutil.Equals(t, 0, st.dups, "samples held by two live blocks")
	testutil.Equals(t, []string(nil), st.partial, "block folders without meta.json left behind")
	testutil.Equals(t, 0, len(st.listing.Problems), "problems: %v", st.listing.Problems)
	recs, err := os.ReadDir(filepath.Join(w.bucket.dir, "lethe", "uploads"))
	if !os.IsNotExist(err) {
		testutil.Ok(t, err)
		var names []string
		for _, r := range recs {
			names = append(names, r.Name())
		}
		testutil.Equals(t, []string(nil), names, "upload records left after the clean run")
	}
	rwCheckBlocksComplete(t, w.bucket)
	rwCheckNoUncoveredOverlap(t, st.listing)
	killCheckMarks(t, w, st, false)
	// The leaked token's series is deleted forever: unless its tombstone was the one cancelled,
	// no byte of a live block may hold it.
	for _, d := range w.liveDeletions() {
		if slices.Contains(d.matchers, `{token="`+rwSecret+`"}`) {
			hits, scanned := rwObjectsContaining(t, w.bucket, st.listing, rwSecret)
			testutil.Assert(t, scanned > 0, "no object of a live block scanned")
			testutil.Equals(t, []string(nil), hits, "objects of live blocks holding the leaked token")
		}
	}
	return st
}

// killCheckMarks follows every deletion mark of st: a replacement mark must name a block that is
// complete, rewritten from the marked block, that applied only known tombstones that are not
// cancelled (among them every one the mark lists), and whose samples are exactly the marked
// block's minus those tombstones'; that block is live or replaced so in turn. "Nothing" must be
// what the listed tombstones leave of the marked block. A withdrawn block (a duplicate rewrite)
// is never named by a replacement mark. With partialOK, a mark that does not decode (a kill in
// the middle of its upload) is counted and left to the next run's repair.
func killCheckMarks(t *testing.T, w *killWorld, st rwState, partialOK bool) killMarkStats {
	t.Helper()
	var stats killMarkStats
	cache := map[string]rwSamples{}
	samplesOf := func(id string) rwSamples {
		if s, ok := cache[id]; ok {
			return s
		}
		s := rwSamples{}
		rwReadBlockSamples(t, filepath.Join(w.bucket.dir, id), s)
		cache[id] = s
		return s
	}
	for _, id := range st.markedIDs() {
		m, err := killReadMark(w.bucket, id)
		if err != nil {
			if partialOK && !os.IsNotExist(err) {
				stats.undecodable++
				continue
			}
			t.Errorf("deletion mark of %s: %v", id, err)
			continue
		}
		switch {
		case strings.HasPrefix(m.Details, "lethe-rewriter: withdrawn: ") || strings.HasPrefix(m.Details, "lethe-rewriter: duplicate child of "):
			stats.withdrawn++
			continue
		case !strings.HasPrefix(m.Details, killReplacedBy):
			t.Errorf("block %s: a deletion mark no rewriter replacement explains: %q", id, m.Details)
			continue
		}
		stats.replaced++
		cur, details := id, m.Details
		for depth := 0; ; depth++ {
			if depth >= 10 {
				t.Errorf("the replacements of %s do not end", id)
				break
			}
			next, listed, err := killParseReplacement(details)
			if err != nil {
				t.Errorf("block %s: %v", cur, err)
				break
			}
			stats.links++
			if next == "" {
				stats.nothing++
				left := rwExpectedAfter(t, samplesOf(cur), w.deletionsOf(t, cur, listed), w.ext)
				if n := left.count(); n > 0 {
					t.Errorf("block %s is marked as replaced by nothing, yet %d of its samples survive the tombstones %v", cur, n, listed)
				}
				break
			}
			if !killCheckLink(t, w, cur, next, listed, samplesOf) {
				break
			}
			nm, err := killReadMark(w.bucket, next)
			if os.IsNotExist(err) {
				break // Live: the chain ends in a whole block.
			}
			if err != nil {
				if !partialOK {
					t.Errorf("block %s replaced by %s, whose deletion mark does not decode: %v", cur, next, err)
				}
				break
			}
			if !strings.HasPrefix(nm.Details, killReplacedBy) {
				t.Errorf("block %s is marked as replaced by %s, which is marked too and replaced by nothing live: %q", cur, next, nm.Details)
				break
			}
			cur, details = next, nm.Details
		}
	}
	return stats
}

// killReplacedBy starts a rewriter's replacement mark (rewriter/replace.go).
const killReplacedBy = "lethe-rewriter: replaced by "

// killParseReplacement reads "lethe-rewriter: replaced by <ULID|nothing (every sample deleted)>
// applying <ULID>,<ULID>…": the named block ("" for nothing) and the tombstones listed.
func killParseReplacement(details string) (string, []string, error) {
	rest := strings.TrimPrefix(details, killReplacedBy)
	named, list, ok := strings.Cut(rest, " applying ")
	if !ok {
		return "", nil, fmt.Errorf("replacement mark without the tombstones applied: %q", details)
	}
	var listed []string
	for _, s := range strings.Split(list, ",") {
		if _, err := ulid.ParseStrict(s); err != nil {
			return "", nil, fmt.Errorf("replacement mark %q lists %q, not a tombstone id", details, s)
		}
		listed = append(listed, s)
	}
	sort.Strings(listed)
	if strings.HasPrefix(named, "nothing") {
		return "", listed, nil
	}
	if _, err := ulid.ParseStrict(named); err != nil {
		return "", nil, fmt.Errorf("replacement mark %q names %q, not a block", details, named)
	}
	return named, listed, nil
}

// deletionsOf returns the deletions of tombstone ids; an unknown or cancelled one fails the test
// (block names the block whose data it took).
func (w *killWorld) deletionsOf(t *testing.T, blk string, ids []string) []batteryDeletion {
	t.Helper()
	var out []batteryDeletion
	for _, id := range ids {
		tb, ok := w.tombs[id]
		switch {
		case !ok:
			t.Errorf("block %s: the tombstone %s applied to it is not one the test registered", blk, id)
		case tb.cancelled:
			t.Errorf("block %s: the cancelled tombstone %s (%s) was applied to it and the result named its replacement", blk, id, tb.del.name)
		default:
			out = append(out, tb.del)
		}
	}
	return out
}

// killCheckLink checks one replacement: next, named by the mark of src that lists the tombstones
// listed, is a complete rewrite of src that holds exactly src's samples minus those of the
// tombstones it applied. It reports whether the chain can be followed further.
func killCheckLink(t *testing.T, w *killWorld, src, next string, listed []string, samplesOf func(string) rwSamples) bool {
	t.Helper()
	dir := filepath.Join(w.bucket.dir, next)
	raw, err := os.ReadFile(filepath.Join(dir, block.MetaFilename))
	if err != nil {
		t.Errorf("block %s is marked as replaced by %s, which has no meta.json: %v", src, next, err)
		return false
	}
	meta, err := block.DecodeMeta(raw)
	if err != nil {
		t.Errorf("block %s is marked as replaced by %s, whose meta.json does not decode: %v", src, next, err)
		return false
	}
	if err := killComplete(dir, meta); err != nil {
		t.Errorf("block %s is marked as replaced by %s, which is not complete: %v", src, next, err)
		return false
	}
	if len(meta.Compaction.Parents) != 1 || meta.Compaction.Parents[0].ULID.String() != src {
		t.Errorf("block %s is marked as replaced by %s, whose parents are %v", src, next, meta.Compaction.Parents)
		return false
	}
	applied, err := killApplied(meta)
	if err != nil {
		t.Errorf("replacement %s of %s: %v", next, src, err)
		return false
	}
	for _, id := range listed {
		if !slices.Contains(applied, id) {
			t.Errorf("the mark of %s lists tombstone %s, which its replacement %s did not apply (it applied %v)", src, id, next, applied)
		}
	}
	want := rwExpectedAfter(t, samplesOf(src), w.deletionsOf(t, next, applied), w.ext)
	if d := rwDiffSamples(want, samplesOf(next)); d != "" {
		t.Errorf("block %s is marked as replaced by %s, which does not hold its samples minus the tombstones %v: %s", src, next, applied, d)
		return false
	}
	return true
}

// killReadMark reads a block's deletion mark; os.IsNotExist(err) when it has none.
func killReadMark(b cliBucket, id string) (*block.DeletionMark, error) {
	raw, err := os.ReadFile(filepath.Join(b.dir, id, block.DeletionMarkFilename))
	if err != nil {
		return nil, err
	}
	var m block.DeletionMark
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("decode %q: %w", clip(string(raw), 200), err)
	}
	return &m, nil
}

// killComplete checks that a block folder holds the files its meta.json lists, with their sizes,
// and an index and a chunk file.
func killComplete(dir string, meta *block.Meta) error {
	for _, f := range []string{block.IndexFilename, filepath.Join(block.ChunksDirname, "000001")} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return err
		}
	}
	if meta.Thanos == nil || len(meta.Thanos.Files) == 0 {
		return nil
	}
	var files []struct {
		RelPath   string `json:"rel_path"`
		SizeBytes int64  `json:"size_bytes"`
	}
	if err := json.Unmarshal(meta.Thanos.Files, &files); err != nil {
		return fmt.Errorf("thanos.files: %w", err)
	}
	for _, f := range files {
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f.RelPath)))
		if err != nil {
			return err
		}
		if f.SizeBytes > 0 && fi.Size() != f.SizeBytes {
			return fmt.Errorf("%s holds %d bytes, meta.json says %d", f.RelPath, fi.Size(), f.SizeBytes)
		}
	}
	return nil
}

// killApplied returns the tombstones a rewritten block records as applied (its lethe section for
// a plain Prometheus block, thanos.rewrites' request ids for a Thanos block), sorted.
func killApplied(meta *block.Meta) ([]string, error) {
	var out []string
	if meta.Lethe != nil {
		for _, id := range meta.Lethe.TombstonesApplied {
			out = append(out, id.String())
		}
	} else if meta.Thanos != nil && len(meta.Thanos.Rewrites) > 0 {
		var rewrites []struct {
			DeletionsApplied []struct {
				RequestID string `json:"request_id"`
			} `json:"deletions_applied"`
		}
		if err := json.Unmarshal(meta.Thanos.Rewrites, &rewrites); err != nil {
			return nil, fmt.Errorf("thanos.rewrites: %w", err)
		}
		for _, rw := range rewrites {
			for _, d := range rw.DeletionsApplied {
				if id, ok := strings.CutPrefix(d.RequestID, "lethe-tombstone-"); ok {
					out = append(out, id)
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("block %s records no tombstone applied", meta.ULID)
	}
	sort.Strings(out)
	return slices.Compact(out), nil
}
