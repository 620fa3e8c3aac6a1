package e2e

// TestRewriterKillRounds: real lethe-rewriter processes, four at a time on one FILESYSTEM bucket
// of real blocks, with and without --shard, tombstones added between their plans, one cancelled
// at the last moment, and random SIGKILLs; seeded rounds of that, checked after every wave and,
// after one more clean run, against the deletions' oracle and a real Prometheus.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/efficientgo/core/testutil"
)

const (
	// killWaves is the number of waves of workers per round, killWorkers the workers of a wave.
	killWaves   = 3
	killWorkers = 4
	// killFirstSeed is the seed of round 0; round i has seed killFirstSeed+i.
	killFirstSeed = 14000
	// killBatteryCases is how many of the battery's cases the last round's Prometheus answers.
	killBatteryCases = 400
	// killCancelFlag is the undelete window (and max wait) of the tombstone a round cancels at
	// the last moment, as a Prometheus duration.
	killCancelFlag = "1200ms"
)

// killTotals are the figures of a test run, logged at its end.
type killTotals struct {
	rounds, passed, waves       int
	started, killed, endedFirst int // endedFirst: given a kill time, but exited before it
	exitCodes                   map[int]int
	cancelled, cancelRefused    int
	// events counts the workers' warnings, errors and a few telling info lines, by message.
	events                       map[string]int
	partialSeen, undecodableSeen int
	marksChecked, linksVerified  int
	cleanRunsOK, prometheusCases int
	prometheusMismatches         int
	seedsFailed                  []uint64
}

// killSeeds returns the seeds to run: LETHE_KILL_SEED alone, or LETHE_KILL_ROUNDS (default 3)
// seeds from killFirstSeed.
func killSeeds(t *testing.T) []uint64 {
	t.Helper()
	if s := os.Getenv("LETHE_KILL_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		testutil.Ok(t, err, "LETHE_KILL_SEED=%q", s)
		return []uint64{seed}
	}
	rounds := 3
	if s := os.Getenv("LETHE_KILL_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		testutil.Ok(t, err, "LETHE_KILL_ROUNDS=%q", s)
		testutil.Assert(t, n > 0 && n <= 1000, "LETHE_KILL_ROUNDS=%d: want 1..1000", n)
		rounds = n
	}
	var out []uint64
	for i := 0; i < rounds; i++ {
		out = append(out, uint64(killFirstSeed+i))
	}
	return out
}

// TestRewriterKillRounds runs seeded rounds. Each round uploads the battery's three blocks (as
// Thanos blocks or plain Prometheus blocks) to a new FILESYSTEM bucket, registers five of the
// battery's deletions as due tombstones, and runs three waves of four `lethe-rewriter run`
// processes at once (--threshold 0), all without --shard, all with --shard=i/4, or mixed. In
// each wave one more due tombstone is added between the start of some workers and the others,
// so the workers of a wave plan different tombstone sets for the same blocks; in one wave a
// tombstone whose short undelete window ends as the workers start is cancelled at the last
// moment (the CLI refuses once the window has ended: then it stays and is applied). About half
// of the workers are killed with SIGKILL (their process group) 30ms–2.5s after their start.
// After each wave killCheckWave's invariants hold; after the last wave one clean run exits 0 and
// killCheckFinal's hold. In the last round, a fresh Prometheus over the live blocks answers a
// seeded sample of the battery as the oracle Prometheus does after delete_series and
// clean_tombstones.
//
// LETHE_KILL_ROUNDS sets the number of rounds, LETHE_KILL_SEED replays one seed (the seed's
// choices are replayed; the processes' timing is not).
func TestRewriterKillRounds(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real rewriter processes for many seconds")
	}
	began := time.Now()
	seeds := killSeeds(t)
	dirs := rwWriteBatteryBlocks(t)
	original := rwSamplesOfDirs(t, dirs)
	tot := &killTotals{exitCodes: map[int]int{}, events: map[string]int{}}
	for i, seed := range seeds {
		tot.rounds++
		ok := t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			killRound(t, seed, dirs, original, i == len(seeds)-1, tot)
		})
		if ok {
			tot.passed++
		} else {
			tot.seedsFailed = append(tot.seedsFailed, seed)
		}
	}
	t.Logf("%d of %d rounds passed in %v; %d waves; %d processes started, %d killed by SIGKILL while running, %d ended before their kill time; exit codes %v",
		tot.passed, tot.rounds, time.Since(began).Round(time.Millisecond), tot.waves, tot.started, tot.killed, tot.endedFirst, tot.exitCodes)
	t.Logf("late cancellations: %d accepted, %d refused (window ended)", tot.cancelled, tot.cancelRefused)
	for _, msg := range slices.Sorted(maps.Keys(tot.events)) {
		t.Logf("  workers logged %4d× %q", tot.events[msg], msg)
	}
	t.Logf("between waves: %d partial uploads and %d deletion marks cut short seen; %d replacement marks followed, %d replacements verified sample by sample; %d clean runs exited 0",
		tot.partialSeen, tot.undecodableSeen, tot.marksChecked, tot.linksVerified, tot.cleanRunsOK)
	if tot.prometheusCases > 0 {
		t.Logf("fresh Prometheus vs oracle: %d battery cases, %d mismatches", tot.prometheusCases, tot.prometheusMismatches)
	}
	if len(tot.seedsFailed) > 0 {
		t.Errorf("failing seeds %v; replay one with LETHE_KILL_SEED=<seed>", tot.seedsFailed)
	}
}

// killWorkerConfig is one worker's flags and fate, drawn from the round's seed.
type killWorkerConfig struct {
	args []string
	kill killPlan
}

// killPhases are the debug log lines a kill can follow: a job's phases (the upload of the new
// block runs between "verified…" and the marks), a checkpoint, and the plan.
var killPhases = []string{
	"plan",
	"downloaded",
	"checkpoint saved",
	"rewritten",
	"verified with Prometheus' block reader",
	"marked the block for deletion",
}

// killRound runs one seeded round (see TestRewriterKillRounds).
func killRound(t *testing.T, seed uint64, dirs []string, original rwSamples, compare bool, tot *killTotals) {
	rng := killRand(seed)
	var ext map[string]string
	if rng.IntN(2) == 0 {
		ext = rwExt
	}
	mode := []string{"no --shard", "--shard=i/4", "mixed"}[rng.IntN(3)]
	leaseTTL := []string{"2s", "10m"}[rng.IntN(2)]
	cancelWave := rng.IntN(killWaves)
	dels := rwBatteryDeletions()
	rng.Shuffle(len(dels), func(i, j int) { dels[i], dels[j] = dels[j], dels[i] })
	// dels: five registered first, one added in each wave, the last one cancelled late.
	testutil.Equals(t, 5+killWaves+1, len(dels))

	b := rwNewBucket(t)
	rwUpload(t, b, dirs, ext)
	w := &killWorld{bucket: b, ext: ext, original: original, tombs: map[string]*killTombstone{}}
	add := func(d batteryDeletion, flags ...string) *killTombstone {
		tb := &killTombstone{id: rwAddTombstone(t, b, d, flags...), del: d}
		w.tombs[tb.id] = tb
		return tb
	}
	for _, d := range dels[:5] {
		add(d)
	}
	t.Logf("seed %d: %s, external labels %v, --lease.ttl=%s, late cancellation in wave %d", seed, mode, ext, leaseTTL, cancelWave)

	var all []*killProc
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		t.Logf("seed %d failed; replay with LETHE_KILL_SEED=%d. Tombstones:", seed, seed)
		for _, id := range slices.Sorted(maps.Keys(w.tombs)) {
			tb := w.tombs[id]
			t.Logf("  %s %q cancelled=%v", id, tb.del.name, tb.cancelled)
		}
		for _, p := range all {
			t.Logf("%s %v (kill %v, killed %v, exit %d), warnings and errors:\n%s", p.name, p.args, p.plan, p.wasKilled(),
				p.cmd.ProcessState.ExitCode(), clip(killNotable(p.stderr.String()), 6000))
		}
	})

	for wave := 0; wave < killWaves; wave++ {
		// Every choice of the wave is drawn before anything runs, so that a seed replays them.
		cfgs := make([]killWorkerConfig, killWorkers)
		for i := range cfgs {
			a := []string{"--threshold", "0", "--lease.ttl", leaseTTL, "--log.level", "debug",
				"--rate.series-per-second", []string{"100", "200", "400"}[rng.IntN(3)],
				"--batch.series", []string{"5", "25"}[rng.IntN(2)],
				"--checkpoint.interval", []string{"0s", "100ms"}[rng.IntN(2)],
				"--concurrency", []string{"1", "2"}[rng.IntN(2)]}
			if mode == "--shard=i/4" || (mode == "mixed" && rng.IntN(2) == 0) {
				a = append(a, fmt.Sprintf("--shard=%d/%d", i, killWorkers))
			}
			cfgs[i].args = a
			switch rng.IntN(5) {
			case 0, 1:
				// Most workers that find work are done within a second, and those that find
				// none within 100ms: the square makes short delays likelier than long ones.
				u := rng.Float64()
				cfgs[i].kill.killAfter = 30*time.Millisecond + time.Duration(u*u*float64(2470*time.Millisecond))
			case 2, 3:
				// At a chosen phase: a worker that never gets there ends by itself. The delay
				// of at most 3ms lands the kill inside what follows the log line (an upload
				// of a few hundred KiB takes a few milliseconds here).
				cfgs[i].kill.killOn = killPhases[rng.IntN(len(killPhases))]
				cfgs[i].kill.killDelay = time.Duration(rng.Int64N(int64(3 * time.Millisecond)))
			}
		}
		before := 1 + rng.IntN(killWorkers-1) // workers started before the new tombstone
		lead := time.Duration(rng.Int64N(int64(200 * time.Millisecond)))
		// The CLI takes 50–200ms from its start to the check of the window on a busy machine.
		cancelAt := -350*time.Millisecond + time.Duration(rng.Int64N(int64(400*time.Millisecond)))

		var (
			late      *killTombstone
			due       time.Time
			cancelled chan result
		)
		if wave == cancelWave {
			late = add(dels[len(dels)-1], "--undelete-window", killCancelFlag, "--max-wait", killCancelFlag)
			due = killUndeleteUntil(t, b, late.id)
			time.Sleep(time.Until(due.Add(-lead)))
			// The cancellation goes at its moment whatever the workers and the new tombstone
			// take to start.
			cancelled = make(chan result, 1)
			go func() {
				time.Sleep(time.Until(due.Add(cancelAt)))
				cancelled <- killCancel(b, late.id)
			}()
		}
		procs := make([]*killProc, 0, killWorkers)
		for i, c := range cfgs {
			if i == before {
				add(dels[5+wave])
			}
			procs = append(procs, killStart(t, b, fmt.Sprintf("wave %d worker %d", wave, i), c.args, c.kill))
		}
		all = append(all, procs...)
		cancelNote := ""
		if late != nil {
			r := <-cancelled
			switch {
			case r.code == 0:
				late.cancelled = true
				tot.cancelled++
				cancelNote = fmt.Sprintf("; cancelled %s at %v from its due time", late.id, cancelAt)
			case strings.Contains(r.stderr, "can no longer be cancelled"):
				tot.cancelRefused++
				cancelNote = fmt.Sprintf("; cancel of %s at %v from its due time refused: the window had ended", late.id, cancelAt)
			default:
				t.Fatalf("lethe tombstone cancel %s exited %d: %s", late.id, r.code, r.stderr)
			}
		}
		codes := map[int]int{}
		killed := 0
		var ran []string
		for _, p := range procs {
			code := p.wait(t)
			killCheckNoCrash(t, p)
			codes[code]++
			ran = append(ran, fmt.Sprintf("%v/%v/%v", p.duration().Round(10*time.Millisecond), p.plan, p.wasKilled()))
			tot.exitCodes[code]++
			tot.started++
			switch {
			case p.wasKilled() && code == -1:
				killed++
				tot.killed++
			case p.plan.killAfter > 0 || p.plan.killOn != "":
				tot.endedFirst++
			}
			if !p.wasKilled() && code != 0 && code != 4 {
				t.Logf("%s exited %d without a kill: %s", p.name, code, clip(killNotable(p.stderr.String()), 2000))
			}
			log := p.stderr.String()
			if os.Getenv("LETHE_KILL_VERBOSE") != "" {
				t.Logf("%s %v (kill %v, killed %v, exit %d, ran %v):\n%s", p.name, p.args, p.plan, p.wasKilled(), code, p.duration(), log)
			}
			killCountEvents(log, tot.events)
		}
		tot.waves++
		st, ms := killCheckWave(t, w)
		tot.partialSeen += len(st.partial) + ms.metaCut
		tot.undecodableSeen += ms.undecodable
		tot.marksChecked += ms.replaced
		tot.linksVerified += ms.links
		t.Logf("wave %d: %d workers (%d before the new tombstone), %d killed, exit codes %v, ran/kill plan/killed %v%s; live %d, marked %d, partial %d; marks %+v",
			wave, len(procs), before, killed, codes, ran, cancelNote, len(st.listing.Blocks), len(st.listing.Marked), len(st.partial), ms)
		if t.Failed() {
			return // The next wave would only pile more on what already broke.
		}
	}

	r := b.rewriter(t, "run", "--threshold", "0", "--lease.ttl", leaseTTL)
	if os.Getenv("LETHE_KILL_VERBOSE") != "" {
		t.Logf("clean run (exit %d):\n%s", r.code, r.stderr)
		t.Logf("tombstones:\n%s", b.run(t, "tombstone", "list").stdout)
	}
	if bugs := killCleanRunLeft(t, w); len(bugs) > 0 {
		t.Errorf("after the clean run (exit %d): %s\n%s", r.code, strings.Join(bugs, "; "), rwGrep(r.stderr, "ERROR"))
	}
	rwCheckRerun(t, r)
	if r.code == 0 {
		tot.cleanRunsOK++
	}
	st := killCheckFinal(t, w)
	killCheckStates(t, w)
	t.Logf("after the clean run: live %d, marked %d; %d samples, as the %d tombstones not cancelled leave them",
		len(st.listing.Blocks), len(st.listing.Marked), st.samples.count(), len(w.liveDeletions()))
	if !compare || t.Failed() {
		return
	}

	var liveDirs []string
	for _, m := range st.listing.Blocks {
		liveDirs = append(liveDirs, filepath.Join(b.dir, m.ULID.String()))
	}
	fresh := startPrometheus(t, liveDirs)
	oracle := startOracle(t, dirs, w.liveDeletions())
	cases := batteryCases()
	rng.Shuffle(len(cases), func(i, j int) { cases[i], cases[j] = cases[j], cases[i] })
	cases = cases[:min(killBatteryCases, len(cases))]
	n, byKind, mismatches := rwComparePrometheus(t, oracle, fresh, cases)
	tot.prometheusCases += n
	tot.prometheusMismatches += len(mismatches)
	t.Logf("fresh Prometheus on the live blocks vs the oracle: %d cases (%v), %d mismatches", n, byKind, len(mismatches))
	testutil.Equals(t, len(cases), n)
	if len(mismatches) > 0 {
		t.Errorf("%d of %d answers of a fresh Prometheus on the live blocks differ from the oracle's:\n%s",
			len(mismatches), n, strings.Join(mismatches[:min(25, len(mismatches))], "\n"))
	}
}

// killUndeleteUntil returns the end of a tombstone's undelete window, as `lethe tombstone show`
// prints it.
func killUndeleteUntil(t *testing.T, b cliBucket, id string) time.Time {
	t.Helper()
	r := b.run(t, "tombstone", "show", "--output", "json", id)
	testutil.Equals(t, 0, r.code, "tombstone show %s: %s", id, r.stderr)
	var v struct {
		UndeleteUntil time.Time `json:"undelete_until"`
	}
	testutil.Ok(t, json.Unmarshal([]byte(r.stdout), &v), r.stdout)
	testutil.Assert(t, !v.UndeleteUntil.IsZero(), "tombstone show %s: no undelete_until: %s", id, r.stdout)
	return v.UndeleteUntil
}

// killCheckStates checks that `lethe tombstone list` says cancelled of exactly the tombstones
// whose cancellation the CLI accepted.
func killCheckStates(t *testing.T, w *killWorld) {
	t.Helper()
	r := w.bucket.run(t, "tombstone", "list", "--output", "json")
	testutil.Equals(t, 0, r.code, "tombstone list: %s", r.stderr)
	var l listing
	testutil.Ok(t, json.Unmarshal([]byte(r.stdout), &l), r.stdout)
	var got, want []string
	for _, v := range l.Tombstones {
		if v.State == "cancelled" {
			got = append(got, v.ID)
		}
	}
	for id, tb := range w.tombs {
		if tb.cancelled {
			want = append(want, id)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	testutil.Equals(t, len(w.tombs), len(l.Tombstones), "tombstones listed")
	testutil.Equals(t, want, got, "cancelled tombstones")
}

// killNotable keeps the warning and error lines of a worker's log, and its last line.
func killNotable(log string) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	var out []string
	for _, l := range lines {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
			out = append(out, clip(l, 400))
		}
	}
	if len(lines) > 0 {
		out = append(out, "last: "+clip(lines[len(lines)-1], 400))
	}
	return strings.Join(out, "\n")
}

// killCancel runs `lethe tombstone cancel` without the test's helpers, so that it can run in a
// goroutine of its own at a chosen moment; code -1 and the error in stderr if it cannot run.
func killCancel(b cliBucket, id string) result {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binaries.lethe, b.conf, "tombstone", "cancel", "--reason", "kill rounds: undone at the last moment", "--author", "e2e", id)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return result{code: -1, stderr: err.Error()}
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// killTellingInfo are the info lines of a worker worth counting: what it found other workers left.
var killTellingInfo = []string{
	"removed a partial upload left by an earlier run",
	"leaving a partial upload another worker may still be writing",
	"resuming from a checkpoint",
}

// killCountEvents adds the warning and error messages of a worker's JSON log, and its telling
// info lines, to events.
func killCountEvents(log string, events map[string]int) {
	for _, l := range strings.Split(log, "\n") {
		var e struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal([]byte(l), &e) != nil {
			continue
		}
		if e.Level == "WARN" || e.Level == "ERROR" || slices.Contains(killTellingInfo, e.Msg) {
			events[e.Level+" "+e.Msg]++
		}
	}
}

// killRand is the round's source of every choice: ChaCha8 keyed by the seed, so that nearby seeds
// draw unrelated choices.
func killRand(seed uint64) *rand.Rand {
	var key [32]byte
	copy(key[8:], "lethe TestRewriterKillRounds")
	binary.LittleEndian.PutUint64(key[:8], seed)
	return rand.New(rand.NewChaCha8(key))
}

// killCleanRunLeft returns what the bucket shows, after the clean run, of the bugs this test
// found in the rewriter (see the notes of issue 14), each fixed since:
//   - a meta.json cut short by a kill while it was written, never repaired;
//   - a partial upload (a folder without meta.json) left by a dead worker;
//   - a due tombstone's samples left live: a dead worker's rewrite of an older plan won over the
//     run's own;
//   - a block left live beside a live rewrite of the same data (its source, or a sibling).
func killCleanRunLeft(t *testing.T, w *killWorld) []string {
	t.Helper()
	b := w.bucket
	var out []string
	if cut := killCutMetas(t, b); len(cut) > 0 {
		out = append(out, fmt.Sprintf("meta.json of %v cut short by a kill and never repaired", cut))
	}
	st := rwReadState(t, b)
	for _, id := range st.partial {
		out = append(out, fmt.Sprintf("partial upload %s left by a dead worker: %s", id, killDescribeUpload(b, id)))
	}
	if d := rwDiffSamples(rwExpectedAfter(t, w.original, w.liveDeletions(), w.ext), st.samples); strings.HasPrefix(d, "0 samples missing, ") && !strings.HasPrefix(d, "0 samples missing, 0 extra") {
		out = append(out, "due tombstones left unapplied after a clean run: "+clip(d, 300))
	}
	if st.dups > 0 {
		out = append(out, fmt.Sprintf("%d samples held by two live blocks %v (a block left live beside a rewrite of the same data)", st.dups, st.liveIDs()))
	}
	live := map[string]bool{}
	for _, m := range st.listing.Blocks {
		live[m.ULID.String()] = true
	}
	for _, m := range st.listing.Blocks {
		if len(m.Compaction.Parents) == 1 && m.Compaction.Parents[0].ULID != m.ULID && live[m.Compaction.Parents[0].ULID.String()] {
			out = append(out, fmt.Sprintf("source %s still live beside its rewrite %s", m.Compaction.Parents[0].ULID, m.ULID))
		}
	}
	return out
}

// killDescribeUpload lists a block folder's files and sizes, and its upload record, for a
// failure's message.
func killDescribeUpload(b cliBucket, id string) string {
	var files []string
	_ = filepath.WalkDir(filepath.Join(b.dir, id), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			info, ierr := d.Info()
			if ierr == nil {
				rel, _ := filepath.Rel(b.dir, p)
				files = append(files, fmt.Sprintf("%s (%d bytes, %s)", rel, info.Size(), info.ModTime().UTC().Format("15:04:05.000")))
			}
		}
		return nil
	})
	rec, err := os.ReadFile(filepath.Join(b.dir, "lethe", "uploads", id+".json"))
	record := string(rec)
	if err != nil {
		record = err.Error()
	}
	return fmt.Sprintf("files %v; upload record: %s", files, record)
}
